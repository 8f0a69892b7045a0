package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

// The files checked here, relative to this package.
var (
	dashboardFile  = filepath.Join("..", "deploy", "grafana", "imapgate.json")
	rulesDir       = filepath.Join("..", "deploy", "prometheus")
	alertsFile     = filepath.Join(rulesDir, "alerts.yml")
	alertsTestFile = filepath.Join(rulesDir, "alerts_test.yml")
	promConfigFile = filepath.Join(rulesDir, "prometheus.yml")
)

// exposedNames returns every series name /metrics can show (histograms as _bucket, _sum and
// _count), and the imapgate_* family names. Every hook is called once so that the labelled
// families have a child to show.
func exposedNames(t *testing.T) (names map[string]bool, families []string) {
	t.Helper()
	m := NewMetrics(MetricsOptions{})
	exercise(m)
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names = make(map[string]bool)
	for _, f := range fams {
		n := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
		default:
			names[n] = true
		}
		if strings.HasPrefix(n, "imapgate_") {
			families = append(families, n)
		}
	}
	return names, families
}

// exercise calls every proxy.Metrics hook once.
func exercise(m *Metrics) {
	m.ConnOpened("imaps")
	m.Login("ok", "PLAIN", 20*time.Millisecond)
	m.UpstreamConnect("a", "10.0.0.1:143", time.Millisecond, true)
	m.UpstreamConnect("a", "10.0.0.1:143", time.Millisecond, false)
	m.SessionStarted("a", "10.0.0.1:143")
	m.Bytes(DirClientToBackend, 10)
	m.Bytes(DirBackendToClient, 100)
	m.Command("FETCH", 3*time.Millisecond)
	m.Idle(1)
	m.Idle(-1)
	m.Dormant(1)
	m.Dormant(-1)
	m.SessionEnded("a", "10.0.0.1:143", time.Minute)
	m.ConnClosed("imaps")
}

// metricRef finds metric names in PromQL: the families imapgate exposes all start with one
// of these prefixes.
var metricRef = regexp.MustCompile(`\b(?:imapgate|go|process)_[A-Za-z0-9_]+\b`)

// upRef finds Prometheus's own up series of a target.
var upRef = regexp.MustCompile(`\bup\{`)

// ruleName is what alert and recording rule names may look like.
var ruleName = regexp.MustCompile(`^[A-Za-z_:][A-Za-z0-9_:]*$`)

// checkExpr reports the metric names in a PromQL expression that /metrics does not show, and
// unbalanced brackets or quotes.
func checkExpr(t *testing.T, where, expr string, names map[string]bool, used map[string]bool) {
	t.Helper()
	refs := metricRef.FindAllString(expr, -1)
	if len(refs) == 0 && !upRef.MatchString(expr) {
		t.Errorf("%s: no imapgate, go or process metric in %q", where, expr)
	}
	for _, r := range refs {
		if !names[r] {
			t.Errorf("%s: metric %s does not exist (in %q)", where, r, expr)
		}
		used[r] = true
	}
	if err := balanced(expr); err != nil {
		t.Errorf("%s: %v in %q", where, err, expr)
	}
}

// balanced checks that (), [] and {} nest and that double-quoted strings end.
func balanced(expr string) error {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inString := false
	for i := 0; i < len(expr); i++ {
		c := rune(expr[i])
		switch {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '(' || c == '[' || c == '{':
			stack = append(stack, c)
		case c == ')' || c == ']' || c == '}':
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return fmt.Errorf("unbalanced %q at offset %d", c, i)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inString {
		return fmt.Errorf("unterminated string")
	}
	if len(stack) > 0 {
		return fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	return nil
}

// usesFamily reports whether a family (or one of its histogram series) is in used.
func usesFamily(used map[string]bool, fam string) bool {
	return used[fam] || used[fam+"_bucket"] || used[fam+"_sum"] || used[fam+"_count"]
}

// grafanaVars replaces the dashboard's variables with values a PromQL parser accepts.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*", "${instance}", ".*")

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title         string `json:"title"`
		UID           string `json:"uid"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if !json.Valid(data) || dec.More() {
		t.Fatalf("%s: not one valid JSON document", dashboardFile)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Fatalf("%s: title %q, uid %q, schemaVersion %d, %d panels", dashboardFile, d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}

	names, families := exposedNames(t)
	used := make(map[string]bool)
	var exprs []string
	ids := make(map[int]string)
	for _, p := range d.Panels {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: id also used by %q", where, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: gridPos %+v outside the 24-column grid", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want the prometheus ${datasource} variable", where, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, tg := range p.Targets {
			checkExpr(t, where+" "+tg.RefID, tg.Expr, names, used)
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := json.Marshal(v.Query)
		checkExpr(t, "variable "+v.Name, string(q), names, used)
	}
	for _, f := range families {
		if !usesFamily(used, f) {
			t.Errorf("the dashboard does not show %s", f)
		}
	}

	// promtool parses every query as PromQL, as recording rules.
	tool := promtool(t)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(grafanaVars.Replace(e)) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}

// ruleFile is the rule file format of Prometheus (rulefmt), decoded strictly.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert         string            `yaml:"alert"`
			Record        string            `yaml:"record"`
			Expr          string            `yaml:"expr"`
			For           string            `yaml:"for"`
			KeepFiringFor string            `yaml:"keep_firing_for"`
			Labels        map[string]string `yaml:"labels"`
			Annotations   map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// templateFuncs stand in for the functions Prometheus offers alert templates, so that the
// annotations parse as Go templates.
var templateFuncs = template.FuncMap{}

// templateDefs are the variables Prometheus defines before an alert template.
const templateDefs = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"

func init() {
	for _, name := range []string{"humanize", "humanize1024", "humanizeDuration", "humanizePercentage",
		"humanizeTimestamp", "title", "toUpper", "toLower", "query", "first", "value", "label",
		"strvalue", "args", "reReplaceAll", "match", "graphLink", "tableLink", "safeHtml",
		"externalURL", "pathPrefix", "sortByLabel", "stripPort", "stripDomain", "parseDuration", "toTime"} {
		templateFuncs[name] = func(...any) string { return "" }
	}
}

func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", alertsFile)
	}
	names, _ := exposedNames(t)
	alerts := make(map[string]bool)
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: no name or no rules", g.Name)
		}
		for i, r := range g.Rules {
			where := fmt.Sprintf("group %s rule %d (%s)", g.Name, i, r.Alert+r.Record)
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("%s: want exactly one of alert and record", where)
			}
			if alerts[r.Alert] {
				t.Errorf("%s: alert defined twice", where)
			}
			alerts[r.Alert] = true
			if !ruleName.MatchString(r.Alert + r.Record) {
				t.Errorf("%s: invalid name", where)
			}
			checkExpr(t, where, r.Expr, names, map[string]bool{})
			if r.For != "" {
				if _, err := model.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for: %v", where, err)
				}
			}
			if r.Alert == "" {
				continue
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", where, s)
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			for k, v := range r.Annotations {
				if _, err := template.New(k).Funcs(templateFuncs).Parse(templateDefs + v); err != nil {
					t.Errorf("%s: annotation %s: %v", where, k, err)
				}
			}
		}
	}
	for _, want := range []string{"ImapgateBackendUnavailable", "ImapgateLoginFailureRatioHigh", "ImapgateLoginLatencyHigh"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}

	// Every alert has a unit test case in which it fires.
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	data, err = os.ReadFile(alertsTestFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &tf); err != nil {
		t.Fatalf("%s: %v", alertsTestFile, err)
	}
	if !slices.Contains(tf.RuleFiles, filepath.Base(alertsFile)) {
		t.Errorf("%s does not test %s", alertsTestFile, filepath.Base(alertsFile))
	}
	fires := make(map[string]bool)
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for a := range alerts {
		if a != "" && !fires[a] {
			t.Errorf("%s never fires in %s", a, alertsTestFile)
		}
	}

	tool := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(alertsFile)},
		{"test", "rules", filepath.Base(alertsTestFile)},
		{"check", "config", filepath.Base(promConfigFile)},
	} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = rulesDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
