package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes the report as plain text: a header (date, command, machine, peers),
// one aligned table with a row per scenario and target, then the notes.
func WriteTable(w io.Writer, rep *Report) error {
	var b strings.Builder
	m := rep.Machine
	fmt.Fprintf(&b, "imapgate bench, %s\n", rep.Date.Format("2006-01-02 15:04 MST"))
	if rep.CommandLine != "" {
		fmt.Fprintf(&b, "command:  %s\n", rep.CommandLine)
	}
	fmt.Fprintf(&b, "machine:  %d CPUs (%s), %s, %s RAM, open files limit %d, TCP congestion control %s, %s\n",
		m.CPUs, m.CPUModel, m.Kernel, m.MemTotal, m.FileLimit, m.TCPCongestion, m.GoVersion)
	fmt.Fprintf(&b, "backend:  %s; %d users; throughput mailbox %d messages of %d bytes\n",
		rep.Backend, rep.Options.Users, rep.Options.Messages, rep.Options.MessageSize)
	for _, p := range rep.Peers {
		fmt.Fprintf(&b, "peer:     %s\n", p)
	}
	o := rep.Options
	rounds := ""
	if o.Rounds > 1 {
		rounds = fmt.Sprintf("; logins, throughput and latency: %d rounds, targets taking turns, the median shown", o.Rounds)
	}
	fmt.Fprintf(&b, "load:     %v per scenario and target; logins from %d workers; idle: %d sessions held %v%s\n\n",
		o.Duration, o.Concurrency, o.Sessions, o.Duration, rounds)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\ttarget\tresult\tvs\tcpu gen/proxy/backend/all\tdetails")
	for i := range rep.Results {
		r := &rep.Results[i]
		result, vs, details := row(r)
		cpu := ""
		if r.Skipped == "" && r.Elapsed > 0 {
			cpu = fmt.Sprintf("%.2f/%.2f/%.2f/%.2f", r.CPUGen, r.CPUProxy, r.CPUBackend, r.CPUMachine)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Target, result, vs, cpu, details)
	}
	tw.Flush()
	if len(rep.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// row renders one result: the main figure, the comparison and the details.
func row(r *Result) (result, vs, details string) {
	if r.Skipped != "" {
		return "skipped", "", r.Skipped
	}
	failed := r.Error != ""
	switch r.Scenario {
	case Logins:
		result = fmt.Sprintf("%.0f logins/s", r.Rate)
		details = fmt.Sprintf("session p50 %s, p99 %s; %d sessions", dur(r.P50), dur(r.P99), r.Count)
		if r.ProxyCPUPerOp > 0 {
			details += fmt.Sprintf("; proxy CPU %s/login", dur(secs(r.ProxyCPUPerOp)))
		}
		if r.BackendCPUPerOp > 0 {
			details += fmt.Sprintf("; backend CPU %s/login", dur(secs(r.BackendCPUPerOp)))
		}
		if r.MachineCPUPerOp > 0 {
			details += fmt.Sprintf("; machine CPU %s/login", dur(secs(r.MachineCPUPerOp)))
		}
		if r.Ratio > 0 {
			vs = fmt.Sprintf("%.2f× direct", r.Ratio)
		}
	case Throughput:
		result = fmt.Sprintf("%.0f MB/s", r.Rate)
		details = fmt.Sprintf("%d × FETCH 1:* of %.3g MB", r.Count, float64(r.Bytes)/1e6/float64(max(r.Count, 1)))
		if r.ProxyCPUPerOp > 0 {
			details += fmt.Sprintf("; proxy CPU %s/MB", dur(secs(r.ProxyCPUPerOp)))
		}
		if r.BackendCPUPerOp > 0 {
			details += fmt.Sprintf("; backend CPU %s/MB", dur(secs(r.BackendCPUPerOp)))
		}
		if r.MachineCPUPerOp > 0 {
			details += fmt.Sprintf("; machine CPU %s/MB", dur(secs(r.MachineCPUPerOp)))
		}
		if r.Ratio > 0 {
			vs = fmt.Sprintf("%.2f× direct", r.Ratio)
		}
	case Latency:
		result = fmt.Sprintf("p50 %s", dur(r.P50))
		details = fmt.Sprintf("p99 %s; %d NOOPs", dur(r.P99), r.Count)
		if r.ProxyCPUPerOp > 0 {
			details += fmt.Sprintf("; proxy CPU %s/NOOP", dur(secs(r.ProxyCPUPerOp)))
		}
		if r.BackendCPUPerOp > 0 {
			details += fmt.Sprintf("; backend CPU %s/NOOP", dur(secs(r.BackendCPUPerOp)))
		}
		if r.Target != Direct && (r.AddedP50 != 0 || r.AddedP99 != 0) {
			vs = fmt.Sprintf("%s p50, %s p99", signedDur(r.AddedP50), signedDur(r.AddedP99))
		}
	case Idle:
		held := fmt.Sprintf("%d/%d held", r.Held, r.Count)
		if r.Target == Direct {
			result = held
			details = fmt.Sprintf("no proxy; opened in %s", dur(r.OpenTime))
		} else {
			result = fmt.Sprintf("%.1f KiB/session", r.RSSPerSession/1024)
			details = fmt.Sprintf("%.2f fds/session; %s; RSS %s → %s in %d processes; opened in %s",
				r.FDsPerSession, held, mib(r.RSSBefore), mib(r.RSSAfter), r.Procs, dur(r.OpenTime))
		}
		if r.Ratio > 0 {
			ref := Nginx
			if isTLS(r.Target) {
				ref = NginxTLS
			}
			vs = fmt.Sprintf("%.2f× %s", r.Ratio, ref)
		}
	}
	if len(r.Runs) > 1 && !failed {
		details += "; rounds " + runsText(r)
		if t := roundsVsText(r); t != "" {
			details += " (" + t + ")"
		}
	}
	if failed {
		if r.Count == 0 && r.Opened == 0 {
			result = "FAILED"
			details = r.Error
		} else {
			result = "FAILED " + result
			details = r.Error + "; partial: " + details
		}
		vs = ""
	}
	return result, vs, details
}

// summary is a result on one line, for progress messages.
func summary(r *Result) string {
	result, vs, details := row(r)
	s := result
	if vs != "" {
		s += " (" + vs + ")"
	}
	return s + "; " + details
}

// runsText lists every round's main figure, e.g. "465 593 512 MB/s".
func runsText(r *Result) string {
	unit := map[string]string{Logins: " logins/s", Throughput: " MB/s", Latency: " µs p50"}[r.Scenario]
	return joinf(r.Runs, " ", func(f float64) string {
		if r.Scenario == Latency {
			f /= 1e3
		}
		return fmt.Sprintf("%.0f", f)
	}) + unit
}

// roundsVsText lists every round's comparison with direct's run of the same round, e.g.
// "0.76 0.97 0.73× direct" or "+62 +70 +58 µs".
func roundsVsText(r *Result) string {
	switch {
	case len(r.RoundRatios) > 1:
		return joinf(r.RoundRatios, " ", ratioText) + "× direct"
	case len(r.RoundAdded) > 1:
		return joinf(r.RoundAdded, " ", func(d time.Duration) string { return fmt.Sprintf("%+.0f", float64(d)/1e3) }) + " µs"
	}
	return ""
}

func ratioText(f float64) string { return fmt.Sprintf("%.2f", f) }

// joinf formats each of v with f and joins them with sep.
func joinf[T any](v []T, sep string, f func(T) string) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = f(x)
	}
	return strings.Join(parts, sep)
}

func dur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func signedDur(d time.Duration) string {
	if d < 0 {
		return "-" + dur(-d)
	}
	return "+" + dur(d)
}

func secs(s float64) time.Duration { return time.Duration(s * 1e9) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
