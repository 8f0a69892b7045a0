// Package bench is the engine of `imapgate bench`: it starts an IMAP backend and the
// proxies to compare, drives each with a built-in IMAP load generator over loopback, and
// reports the figures side by side.
//
// What it does:
//
//   - Starts the backend: a real Dovecot (package deploy/dovecot, seeded over IMAP with
//     users, a few small messages each and a mailbox of large messages) or, with
//     Backend "memory", the in-process go-imap server of deploy/memdemo.
//   - Starts each target fresh for each scenario: direct (no proxy), a bare byte relay as
//     a child process (relay.go: what the hop alone costs), imapgate as a child
//     process (`imapgate serve`, plain and implicit TLS on the client side), a second
//     Dovecot as a login proxy (passdb static with proxy=y), and nginx's mail proxy
//     (auth_http answered by the same nginx), plain and implicit TLS. A peer that is not
//     installed is skipped with a note.
//   - Runs the scenarios logins, throughput, latency and idle (see the README's
//     "Performance" section for what each figure means) with its own small IMAP client
//     (Conn): hand-written tagged commands, literals skipped and counted, no parsing.
//   - Measures the proxies from /proc: VmRSS and open descriptors summed over the proxy's
//     process group, and CPU time of the proxy, the backend and the load generator.
//
// What it does not do: it does not tune the peers beyond what a fair comparison needs
// (one worker or login process per core, limits sized for the session count), it does not
// run across machines (loopback only: the figures show the proxies' CPU and memory costs,
// not network effects), and by default it does not isolate CPUs: the load generator, the
// proxy and the backend share the machine's cores, which the report's CPU column makes
// visible (BackendCPUs gives the backend cores of its own). Every load is bounded in count
// and in time. It needs Linux.
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Command is how to run `imapgate serve`: Path with Args (then "-config FILE"), with Env
// added to the bench's environment. Path must be the imapgate executable: the relay
// target runs it too, as `Path bench-relay …` with Env (Args are serve's).
type Command struct {
	Path string
	Args []string
	Env  []string
}

// Options configure Run. Zero values take the defaults in parentheses.
type Options struct {
	Backend     string        // "dovecot" or "memory" ("dovecot")
	Scenarios   []string      // subset of AllScenarios (all)
	Targets     []string      // subset of AllTargets (all)
	Sessions    int           // idle sessions held at once (2000)
	Duration    time.Duration // per scenario and target: logins, throughput, latency, the idle hold (5s)
	Concurrency int           // logins scenario workers (16)
	// Rounds is how often logins, throughput and latency run against every target, the
	// targets taking turns in each round; the median round is reported (3). Idle runs once.
	Rounds      int
	Users       int     // users on the backend (100)
	Messages    int     // messages in the throughput mailbox (20)
	MessageSize int     // bytes per throughput message (1 000 000)
	Imapgate    Command // required for the imapgate and relay targets
	// BackendCPUs, if set, runs the backend (Dovecot only) on these CPUs and the load
	// generator and every proxy on the others, as when the backend has a host of its own.
	// Unset, everything shares every core (the default).
	BackendCPUs []int
	// WorkDir holds configurations, logs and Dovecot's mail. "" means a new temporary
	// directory, removed at the end unless Keep.
	WorkDir string
	Keep    bool
	// Progress receives a line per step; nil discards.
	Progress io.Writer
}

func (o *Options) setDefaults() error {
	if o.Backend == "" {
		o.Backend = "dovecot"
	}
	if o.Backend != "dovecot" && o.Backend != "memory" {
		return fmt.Errorf("unknown backend %q (want dovecot or memory)", o.Backend)
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = AllScenarios
	}
	if len(o.Targets) == 0 {
		o.Targets = AllTargets
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			return fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(AllScenarios, ", "))
		}
	}
	for _, t := range o.Targets {
		if !slices.Contains(AllTargets, t) {
			return fmt.Errorf("unknown target %q (have %s)", t, strings.Join(AllTargets, ", "))
		}
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.Sessions, 2000)
	def(&o.Concurrency, 16)
	def(&o.Rounds, 3)
	def(&o.Users, 100)
	def(&o.Messages, 20)
	def(&o.MessageSize, 1_000_000)
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Sessions < 0 || o.Concurrency < 0 || o.Rounds < 0 || o.Users < 0 || o.Messages < 0 || o.MessageSize < 1000 || o.Duration < 0 {
		return errors.New("counts and durations must be positive (message size at least 1000)")
	}
	if len(o.BackendCPUs) > 0 && o.Backend != "dovecot" {
		return errors.New("backend CPUs need the dovecot backend (the memory one runs in the bench's own process)")
	}
	for _, c := range o.BackendCPUs {
		// Whether this process may use it is checked when pinning, against its CPU set.
		if c < 0 || c >= maxCPU {
			return fmt.Errorf("backend CPU %d: not a CPU number", c)
		}
	}
	if o.Sessions > 1_000_000 || o.Concurrency > 10_000 || o.Rounds > 100 || o.Users > 100_000 || o.Duration > time.Hour {
		return errors.New("too large: at most 1 000 000 sessions, 10 000 workers, 100 rounds, 100 000 users, 1h per scenario")
	}
	return nil
}

// Result is one scenario run against one target.
type Result struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	Skipped  string `json:"skipped,omitempty"` // why it did not run
	Error    string `json:"error,omitempty"`   // why it failed (figures may be partial)
	// Rounds is how many times the scenario ran against the target; the figures are those
	// of the median round. Runs is every round's main figure (logins/s, MB/s or p50 in
	// ns), in the order they ran.
	Rounds int       `json:"rounds"`
	Runs   []float64 `json:"runs,omitempty"`

	Elapsed  time.Duration `json:"elapsed_ns"`
	Count    int           `json:"count"`    // sessions (logins), FETCH commands (throughput), NOOPs (latency), sessions asked (idle)
	Failures int           `json:"failures"` // logins that failed
	// Rate is logins/s (logins), MB/s with 1 MB = 10^6 bytes (throughput), NOOPs/s
	// (latency).
	Rate  float64       `json:"rate"`
	P50   time.Duration `json:"p50_ns"` // session time (logins), round trip (latency)
	P99   time.Duration `json:"p99_ns"`
	Bytes int64         `json:"bytes"` // message bytes fetched (throughput)

	// Idle.
	Opened        int           `json:"opened,omitempty"`
	Held          int           `json:"held,omitempty"` // sessions that answered DONE with OK after the hold
	OpenTime      time.Duration `json:"open_ns,omitempty"`
	Procs         int           `json:"procs,omitempty"` // processes in the proxy's group
	RSSBefore     int64         `json:"rss_before,omitempty"`
	RSSAfter      int64         `json:"rss_after,omitempty"`
	RSSPerSession float64       `json:"rss_per_session,omitempty"` // bytes
	FDsPerSession float64       `json:"fds_per_session,omitempty"`

	// CPU time used during the scenario, in cores (1 = one core busy all along): the load
	// generator (this process, which also holds the backend with Backend "memory"), the
	// proxy's process group, the backend's.
	CPUGen     float64 `json:"cpu_loadgen"`
	CPUProxy   float64 `json:"cpu_proxy"`
	CPUBackend float64 `json:"cpu_backend"`
	// CPUMachine is every CPU's busy time over the scenario (from /proc/stat, so with
	// the kernel's network work), in cores: near the core count means the machine was
	// saturated.
	CPUMachine float64 `json:"cpu_machine"`
	// ProxyCPUPerOp is the proxy's CPU time per operation, in seconds: per login, per
	// MB fetched, per NOOP; per session opened for idle.
	ProxyCPUPerOp float64 `json:"proxy_cpu_per_op,omitempty"`
	// BackendCPUPerOp is the same for the backend (Dovecot only): what each target costs the
	// backend. Behind a proxy Dovecot spends more per MB than direct (see the README).
	BackendCPUPerOp float64 `json:"backend_cpu_per_op,omitempty"`
	// MachineCPUPerOp is every CPU's busy time (CPUMachine's) per operation, in seconds: per
	// login, per MB, per NOOP. With the machine saturated a target's rate is the cores over
	// it, so its difference from direct's is what the target costs the machine in all: the
	// proxy, the backend's extra work behind it, the kernel's for the second connection.
	MachineCPUPerOp float64 `json:"machine_cpu_per_op,omitempty"`

	// Ratio is the main figure against direct (logins/s, MB/s): the median of the rounds'
	// ratios, each round against direct's run of the same round (paired.go); or for idle the
	// memory per session against nginx (same TLS side); 0 if there is none.
	Ratio float64 `json:"ratio,omitempty"`
	// RoundRatios are the rounds' ratios against direct, in the order they ran (with more
	// than one round).
	RoundRatios []float64 `json:"round_ratios,omitempty"`
	// AddedP50 and AddedP99 are latency over direct: the medians of the rounds' differences
	// with direct's run of the same round.
	AddedP50 time.Duration `json:"added_p50_ns,omitempty"`
	AddedP99 time.Duration `json:"added_p99_ns,omitempty"`
	// RoundAdded are the rounds' p50 differences with direct (with more than one round).
	RoundAdded []time.Duration `json:"round_added_p50_ns,omitempty"`
}

// Report is a whole run.
type Report struct {
	Date        time.Time `json:"date"`
	CommandLine string    `json:"command_line"` // set by the caller
	Machine     Machine   `json:"machine"`
	Backend     string    `json:"backend"`
	Peers       []string  `json:"peers"` // versions and settings of what ran
	Options     struct {
		Sessions    int           `json:"sessions"`
		Duration    time.Duration `json:"duration_ns"`
		Concurrency int           `json:"concurrency"`
		Rounds      int           `json:"rounds"`
		Users       int           `json:"users"`
		Messages    int           `json:"messages"`
		MessageSize int           `json:"message_size"`
		BackendCPUs []int         `json:"backend_cpus,omitempty"`
	} `json:"options"`
	Results []Result `json:"results"`
	Notes   []string `json:"notes"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	MemTotal  string `json:"mem_total"`
	FileLimit int    `json:"file_limit"`
	// TCPCongestion is net.ipv4.tcp_congestion_control: with bbr, TCP paces its sends even
	// on loopback, which changes what every target costs the backend.
	TCPCongestion string `json:"tcp_congestion"`
}

// Run starts the backend, runs every scenario against every target (fresh target per
// scenario, targets in turn) and returns the report. A target that fails has its error
// in its Result; Run itself fails only when the backend cannot be set up or ctx ends.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := platformSupported(); err != nil {
		return nil, err
	}
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", args...) }
	rep := &Report{Date: time.Now().UTC(), Machine: describeMachine()}
	if _, err := raiseFileLimit(); err != nil {
		rep.Notes = append(rep.Notes, "could not raise the open files limit: "+err.Error())
	}
	rep.Machine.FileLimit = fileLimit()
	rep.Options.Sessions, rep.Options.Duration, rep.Options.Concurrency = o.Sessions, o.Duration, o.Concurrency
	rep.Options.Rounds = o.Rounds
	rep.Options.Users, rep.Options.Messages, rep.Options.MessageSize = o.Users, o.Messages, o.MessageSize
	rep.Options.BackendCPUs = o.BackendCPUs

	dir := o.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "imapgate-bench-")
		if err != nil {
			return nil, err
		}
		dir = d
		if !o.Keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	say("work directory %s", dir)

	slots := o.Sessions + o.Concurrency + 100
	if !slices.Contains(o.Scenarios, Idle) {
		slots = o.Concurrency + 100
	}
	say("starting the %s backend", o.Backend)
	b, err := startBackend(ctx, &o, dir, max(slots, 1000))
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	defer b.close()
	rep.Backend = b.version
	if len(o.BackendCPUs) > 0 {
		restore, err := pinBackend(b.pgid, o.BackendCPUs)
		if err != nil {
			return nil, err
		}
		defer restore()
	}
	messages := 0
	if slices.Contains(o.Scenarios, Throughput) {
		messages = o.Messages
	}
	say("seeding %d users and %d messages of %d bytes", len(b.users), messages, o.MessageSize)
	if err := b.seed(ctx, 5, messages, o.MessageSize); err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}

	certPEM, keyPEM, pool, err := selfSigned()
	if err != nil {
		return nil, err
	}
	env := &peerEnv{opts: &o, dir: dir, backend: b, certPEM: certPEM, keyPEM: keyPEM, pool: pool, slots: slots}
	rep.Peers = describePeers(o.Targets, &o)

	waitQuiet(ctx, b)
	var peers []string // peerNotes of every scenario
	for _, sc := range o.Scenarios {
		rounds := o.Rounds
		if sc == Idle {
			rounds = 1
		}
		runs := make([][]Result, len(o.Targets))
		for round := 1; round <= rounds; round++ {
			for i, tg := range o.Targets {
				if why := available(tg, &o); why != "" {
					if round == 1 {
						say("%s %s: skipped: %s", sc, tg, why)
					}
					runs[i] = append(runs[i], Result{Scenario: sc, Target: tg, Skipped: why})
					continue
				}
				name := fmt.Sprintf("%s %s", sc, tg)
				if rounds > 1 {
					name += fmt.Sprintf(" (round %d of %d)", round, rounds)
				}
				say("%s: running", name)
				r := Result{Scenario: sc, Target: tg}
				runOne(ctx, env, &r)
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
				if r.Error != "" {
					say("%s: FAILED: %s", name, r.Error)
				} else {
					say("%s: %s", name, summary(&r))
				}
				runs[i] = append(runs[i], r)
				waitQuiet(ctx, b)
			}
		}
		d := slices.Index(o.Targets, Direct)
		for i, rs := range runs {
			m := median(rs)
			if d >= 0 && i != d {
				pairWithDirect(&m, rs, runs[d])
			}
			rep.Results = append(rep.Results, m)
		}
		peers = append(peers, peerNotes(sc, o.Targets, runs)...)
	}
	computeRatios(rep.Results)
	rep.Notes = append(rep.Notes, notes(rep, &o)...)
	rep.Notes = append(rep.Notes, peers...)
	return rep, nil
}

// runOne starts the target, runs one scenario against it, stops it.
func runOne(ctx context.Context, env *peerEnv, r *Result) {
	t, err := env.start(ctx, r.Target)
	if err != nil {
		r.Error = "start: " + firstLine(err)
		return
	}
	e := &scenarioEnv{o: env.opts, t: t, backend: env.backend}
	defer func() {
		if err := t.stop(); err != nil && r.Error == "" {
			r.Error = "stop: " + firstLine(err)
		}
	}()
	if err := e.checkSession(ctx); err != nil {
		r.Error = firstLine(err)
		return
	}
	if t.check != nil {
		if err := t.check(); err != nil {
			r.Error = firstLine(err)
			return
		}
	}
	time.Sleep(300 * time.Millisecond) // let the start-up settle before measuring

	mach0 := machineBusy()
	gen0 := selfCPU()
	proxy0, _ := groupStats(t.pgid, false)
	back0, _ := groupStats(env.backend.pgid, false)
	wall0 := time.Now()
	switch r.Scenario {
	case Logins:
		err = e.logins(ctx, r)
	case Throughput:
		err = e.throughput(ctx, r)
	case Latency:
		err = e.latency(ctx, r)
	case Idle:
		err = e.idle(ctx, r)
	}
	wall := time.Since(wall0).Seconds()
	proxy1, _ := groupStats(t.pgid, false)
	back1, _ := groupStats(env.backend.pgid, false)
	r.CPUGen = (selfCPU() - gen0) / wall
	r.CPUProxy = float64(proxy1.CPUTicks-proxy0.CPUTicks) / clockTick / wall
	r.CPUBackend = float64(back1.CPUTicks-back0.CPUTicks) / clockTick / wall
	machineCPU := float64(machineBusy()-mach0) / clockTick
	r.CPUMachine = machineCPU / wall
	proxyCPU := float64(proxy1.CPUTicks-proxy0.CPUTicks) / clockTick
	if ops := opsOf(r); ops > 0 {
		if r.Scenario != Idle {
			r.MachineCPUPerOp = machineCPU / ops
		}
		if t.pgid > 0 {
			r.ProxyCPUPerOp = proxyCPU / ops
		}
		if env.backend.pgid > 0 && r.Scenario != Idle {
			r.BackendCPUPerOp = float64(back1.CPUTicks-back0.CPUTicks) / clockTick / ops
		}
	}
	if err != nil {
		r.Error = firstLine(err)
	}
}

// mainFigure is what rounds are compared by: logins/s, MB/s, or the p50 round trip.
func mainFigure(r *Result) float64 {
	if r.Scenario == Latency {
		return float64(r.P50)
	}
	return r.Rate
}

// median returns the round whose main figure is the median (the lower one of the middle
// two for an even count), with Rounds and Runs recording every round's main figure. A
// failed or skipped round is returned instead, as the target's result.
func median(rs []Result) Result {
	for _, r := range rs {
		if r.Error != "" || r.Skipped != "" {
			return r
		}
	}
	figs := make([]float64, len(rs))
	for i := range rs {
		figs[i] = mainFigure(&rs[i])
	}
	sorted := slices.Clone(rs)
	slices.SortStableFunc(sorted, func(a, b Result) int { return cmp.Compare(mainFigure(&a), mainFigure(&b)) })
	m := sorted[(len(sorted)-1)/2]
	m.Rounds = len(rs)
	if len(rs) > 1 {
		m.Runs = figs
	}
	return m
}

// opsOf is the count ProxyCPUPerOp divides by.
func opsOf(r *Result) float64 {
	switch r.Scenario {
	case Throughput:
		return float64(r.Bytes) / 1e6
	case Idle:
		return float64(r.Opened)
	}
	return float64(r.Count)
}

// waitQuiet waits (at most 10s) until the machine is quiet: all CPUs together busy less
// than 15% of a core over 300ms. Dovecot has then finished with the last run's sessions. It
// reads only /proc/stat: scanning thousands of backend processes would itself keep a core
// busy. The in-process backend has nothing to finish: no wait.
func waitQuiet(ctx context.Context, b *backend) {
	if b.kind != "dovecot" {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	prev := machineBusy()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(300 * time.Millisecond)
		cur := machineBusy()
		if float64(cur-prev)/clockTick/0.3 < 0.15 {
			return
		}
		prev = cur
	}
}

// computeRatios fills the comparisons not made round by round (pairWithDirect makes the
// others): direct's own ratio, and idle's memory against nginx.
func computeRatios(rs []Result) {
	find := func(sc, tg string) *Result {
		for i := range rs {
			if rs[i].Scenario == sc && rs[i].Target == tg && rs[i].Error == "" && rs[i].Skipped == "" {
				return &rs[i]
			}
		}
		return nil
	}
	for i := range rs {
		r := &rs[i]
		if r.Error != "" || r.Skipped != "" {
			continue
		}
		switch r.Scenario {
		case Logins, Throughput:
			if r.Target == Direct && r.Rate > 0 {
				r.Ratio = 1
			}
		case Idle:
			ref := Nginx
			if isTLS(r.Target) {
				ref = NginxTLS
			}
			if n := find(Idle, ref); n != nil && n.RSSPerSession > 0 && r.Target != ref && r.Target != Direct {
				r.Ratio = r.RSSPerSession / n.RSSPerSession
			}
		}
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "?", Kernel: "?", MemTotal: "?"}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(data))
	}
	m.TCPCongestion = "?"
	if data, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control"); err == nil {
		m.TCPCongestion = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(v), &kb)
				m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return m
}

// procStats are figures summed over a process group.
type procStats struct {
	Procs    int
	RSS      int64 // bytes
	FDs      int
	CPUTicks int64 // user+system, in 1/clockTick seconds
}

// nproc is the number of CPUs this process may use now: after BackendCPUs pinned the
// backend, the CPUs left for the proxies, which they inherit.
func nproc() int {
	if n := usableCPUs(); n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// fileLimit is the current soft RLIMIT_NOFILE, or 1024 if unknown.
func fileLimit() int {
	if n, err := currentFileLimit(); err == nil && n > 0 {
		return int(min(n, 1<<20))
	}
	return 1024
}

// describePeers lists what the targets of this run are.
func describePeers(targets []string, o *Options) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range targets {
		bt := baseTarget(t)
		if seen[bt] || available(t, o) != "" {
			continue
		}
		seen[bt] = true
		switch bt {
		case Imapgate:
			fwd := ""
			if o.Backend == "dovecot" {
				fwd = ", proxy_protocol v2 (the client's address in a PROXY header to the backend's haproxy listener)"
			}
			rt := fmt.Sprintf("GOMAXPROCS=%d (the default: one per core it may use)", nproc())
			if len(o.Imapgate.Env) > 0 {
				rt = "environment " + strings.Join(o.Imapgate.Env, " ")
			}
			out = append(out, fmt.Sprintf("imapgate: `imapgate serve` child process, %s, %s, JSON logs at info (written every 100 ms)%s",
				runtime.Version(), rt, fwd))
		case RelayLoop:
			out = append(out, "relay-loop: the same relay as event loops, one per core (epoll of its own, raw system calls, no goroutine per connection): what that design would save")
		case LoginLoop:
			hdr := ""
			if o.Backend == "dovecot" {
				hdr = " PROXY v2 header,"
			}
			out = append(out, "login-loop: relay-loop with the least an IMAP login proxy does, in its loops: own greeting, the client's LOGIN,"+hdr+
				" the backend's greeting, AUTHENTICATE PLAIN, the answer under the client's tag, then the relay; no routing, logs, metrics or timeouts: the bound for imapgate's logins")
		case Relay:
			out = append(out, "relay: a bare byte relay (`imapgate bench-relay` child process): a goroutine per direction, read(2)/write(2) through a 16 KiB buffer; no IMAP, no login, no TLS, no logs: what one more user-space hop written the plain Go way costs here")
		case DovecotProxy:
			out = append(out, "dovecot-proxy: Dovecot "+commandVersion("dovecot", "--version")+
				" as a second instance: passdb static proxy=y nopassword=y (the backend checks the password), imap-login service_count=0 (2 processes at start, at most 4); it forwards the client's address with an ID command, its only way")
		case Nginx:
			v := strings.TrimPrefix(commandVersion(nginxBinary(), "-v"), "nginx version: ")
			fwd := ""
			if o.Backend == "dovecot" {
				fwd = ", proxy_protocol on (the client's address in a PROXY v1 header to the backend's haproxy listener)"
			}
			out = append(out, fmt.Sprintf("nginx: %s mail proxy, worker_processes %d (one per core), auth_http served by the same nginx%s", v, nproc(), fwd))
		}
	}
	return out
}

// joinInts is "0,1" for [0 1].
func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// notes explains the run's limits in the report.
func notes(rep *Report, o *Options) []string {
	var out []string
	if len(o.BackendCPUs) > 0 {
		out = append(out, fmt.Sprintf("The backend ran on CPUs %s, the load generator (the bench process) and the proxies on the other %d, whose number the proxies' defaults follow (GOMAXPROCS, nginx's workers); the cpu column shows how much of them each used (1.00 = one core busy all along).", joinInts(o.BackendCPUs), nproc()))
	} else {
		out = append(out, fmt.Sprintf("The load generator runs in the bench process on the same %d cores as the proxy and the backend; the cpu column shows how much of them each used (1.00 = one core busy all along).", rep.Machine.CPUs))
	}
	if o.Backend == "memory" {
		out = append(out, "Backend memory: the IMAP server runs inside the bench process, so its CPU is in the load generator's column.")
	}
	if o.Rounds > 1 && slices.ContainsFunc(o.Scenarios, func(sc string) bool { return sc != Idle }) {
		out = append(out, "vs: each round of a target is compared with direct's run of the same round, a few seconds before it, and the median of those comparisons is shown (the rounds' own after \"rounds\"): the machine's speed drifts between rounds by more than the targets differ.")
	}
	if slices.ContainsFunc(o.Scenarios, func(sc string) bool { return sc == Logins || sc == Throughput }) {
		out = append(out, "machine CPU per login or MB: all CPUs' busy time (/proc/stat, the kernel's network work included) over the logins or MB; where the machine is saturated (all near the core count) a target's rate is the cores over it, so its difference from direct's is what the target costs the machine: the proxy, the backend's extra work behind it, the kernel's for the second connection.")
	}
	if slices.Contains(o.Scenarios, Idle) {
		out = append(out, "Idle memory is the VmRSS growth of the proxy's whole process group (imapgate: one process; nginx: master and workers; Dovecot's proxy: master, auth, anvil, log, config, stats and imap-login processes) from before the first session to the end of the hold, divided by the sessions; fds likewise from /proc/PID/fd.")
	}
	skipped := map[string]bool{}
	for _, r := range rep.Results {
		if r.Skipped != "" && !skipped[r.Target] {
			skipped[r.Target] = true
			out = append(out, fmt.Sprintf("%s skipped: %s.", r.Target, r.Skipped))
		}
	}
	return out
}
