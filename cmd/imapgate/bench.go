package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imapgate/imapgate/deploy/bench"
)

// benchChild is how bench runs `imapgate serve`: this executable. Tests replace it.
var benchChild = func() (bench.Command, error) {
	exe, err := os.Executable()
	if err != nil {
		return bench.Command{}, err
	}
	return bench.Command{Path: exe, Args: []string{"serve"}}, nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o bench.Options
	var scenarios, targets, out string
	var quiet bool
	fs.StringVar(&o.Backend, "backend", "dovecot", "`backend`: dovecot (a real Dovecot, started here) or memory (in-process go-imap server)")
	fs.StringVar(&scenarios, "scenarios", strings.Join(bench.AllScenarios, ","), "comma-separated `list` of scenarios")
	fs.StringVar(&targets, "targets", strings.Join(bench.AllTargets, ","), "comma-separated `list` of targets")
	fs.IntVar(&o.Sessions, "n", 2000, "idle sessions held at once")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "`time` per scenario and target (logins, throughput, latency; the idle hold)")
	fs.IntVar(&o.Concurrency, "concurrency", 16, "parallel sessions in the logins scenario")
	fs.IntVar(&o.Rounds, "rounds", 3, "runs of logins, throughput and latency per target, targets taking turns; the median is shown")
	fs.IntVar(&o.Users, "users", 100, "users on the backend")
	fs.IntVar(&o.Messages, "messages", 20, "messages in the throughput mailbox")
	fs.IntVar(&o.MessageSize, "message-size", 1_000_000, "`bytes` per throughput message")
	fs.StringVar(&out, "out", "", "also write the results as JSON to `file`")
	fs.StringVar(&o.WorkDir, "workdir", "", "work `directory` (configurations, logs, mail); default a temporary one, removed at the end")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary work directory (its path is printed)")
	fs.BoolVar(&quiet, "q", false, "no progress messages on standard error")
	backendCPUs := fs.String("backend-cpus", "", "run the Dovecot backend on this comma-separated `list` of CPUs (e.g. 0) and the load generator and the proxies on the others, as when the backend has a host of its own; default: all share every core")
	pprofAddr := fs.String("pprof", "", "run the imapgate children with -pprof `address`, to profile them during a run")
	var childEnv envList
	fs.Var(&childEnv, "env", "set `KEY=VALUE` in the imapgate and relay children's environment (repeatable), e.g. GOMAXPROCS=1 or GOGC=400, to compare runtime settings")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	for _, c := range splitList(*backendCPUs) {
		n, err := strconv.Atoi(c)
		if err != nil {
			fmt.Fprintf(stderr, "imapgate bench: -backend-cpus: %q is not a CPU number\n", c)
			return errUsage
		}
		o.BackendCPUs = append(o.BackendCPUs, n)
	}
	o.Scenarios = splitList(scenarios)
	o.Targets = splitList(targets)
	if !quiet {
		o.Progress = stderr
	}
	child, err := benchChild()
	if err != nil {
		return fmt.Errorf("cannot find the imapgate executable: %w", err)
	}
	if *pprofAddr != "" {
		child.Args = append(child.Args, "-pprof", *pprofAddr)
	}
	child.Env = append(child.Env, childEnv...)
	o.Imapgate = child

	rep, err := bench.Run(ctx, o)
	if rep == nil {
		return err
	}
	rep.CommandLine = commandLine("imapgate bench", args)
	if werr := bench.WriteTable(stdout, rep); werr != nil && err == nil {
		err = werr
	}
	if out != "" {
		data, jerr := json.MarshalIndent(rep, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(out, append(data, '\n'), 0o644)
		}
		if jerr != nil && err == nil {
			err = jerr
		}
	}
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range rep.Results {
		if r.Error != "" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d runs failed (see the table)", failed, len(rep.Results))
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// commandLine renders prefix and args as a shell command line.
func commandLine(prefix string, args []string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, a := range args {
		b.WriteByte(' ')
		if a != "" && !strings.ContainsFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+", r))
		}) {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}

// envList is the repeatable -env flag: KEY=VALUE pairs.
type envList []string

func (l *envList) String() string { return strings.Join(*l, " ") }

func (l *envList) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*l = append(*l, v)
	return nil
}

// runBenchRelay is `imapgate bench-relay`, the bench's relay target (deploy/bench/relay.go):
// a bare byte relay from -listen to -to until SIGINT or SIGTERM.
func runBenchRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench-relay", flag.ContinueOnError)
	listen := fs.String("listen", "", "`address` to accept clients on")
	to := fs.String("to", "", "backend `address` to relay each client to")
	loop := fs.Bool("loop", false, "relay with event loops (the relay-loop target; Linux)")
	login := fs.Bool("login", false, "log each client in to the backend first, in event loops (the login-loop target; Linux)")
	proxyHeader := fs.Bool("proxy-protocol", false, "with -login: send a PROXY v2 header with the client's address to the backend first")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *listen == "" || *to == "" {
		fmt.Fprintln(stderr, "imapgate bench-relay: -listen and -to are required")
		return errUsage
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *login {
		return bench.RunLoopLogin(ctx, ln.(*net.TCPListener), *to, *proxyHeader)
	}
	if *loop {
		return bench.RunLoopRelay(ctx, ln.(*net.TCPListener), *to)
	}
	return bench.RunRelay(ctx, ln, *to)
}
