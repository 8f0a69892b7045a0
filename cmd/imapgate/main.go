// Command imapgate is an IMAP proxy: it accepts mail clients, finds the shard holding each
// user's mailbox, logs in to a backend there and then copies bytes both ways.
//
// Usage:
//
//	imapgate serve -config /etc/imapgate/imapgate.yaml   run the proxy
//	imapgate check -config /etc/imapgate/imapgate.yaml   validate a configuration and summarise it
//	imapgate demo                                        a self-contained demo on 127.0.0.1
//	imapgate bench [-backend dovecot|memory] [flags]     compare imapgate with direct, Dovecot's proxy and nginx
//	imapgate ctl sessions|kick|route|trace …             ask a running imapgate's admin API
//	imapgate version                                     print the version
//
// The configuration reference is in README.md; deploy/examples/imapgate.yaml is a
// commented example.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// defaultConfig is where serve and check look without -config.
const defaultConfig = "/etc/imapgate/imapgate.yaml"

// command is one subcommand. run gets the arguments after the subcommand's name; it returns
// errUsage (wrapped or not) for bad arguments, which makes the exit status 2.
type command struct {
	name, args, summary string
	run                 func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"serve", "-config FILE", "run the proxy until SIGINT or SIGTERM", runServe},
	{"check", "-config FILE", "validate a configuration, load its files, print a summary", runCheck},
	{"demo", "[-imap ADDR] [-imaps ADDR]", "run a demo: two in-process shards behind the proxy", runDemo},
	{"bench", "[-backend dovecot|memory]", "benchmark: direct vs imapgate vs Dovecot's proxy vs nginx", runBench},
	{"ctl", "[-admin URL] COMMAND …", "call a running imapgate's admin API: sessions, kick, route, trace", runCtl},
	{"version", "", "print the version", runVersion},
}

// internalCommands are run by other commands, not by people: they are not in the usage.
var internalCommands = []command{
	{"bench-relay", "-listen ADDR -to ADDR", "the bench's bare byte relay (its relay target)", runBenchRelay},
}

// errUsage marks errors in the command line.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills the process the default way, should
		// shutting down hang.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status: 0 on success, 1 when the
// command failed, 2 for a bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "-version", "--version":
		name = "version"
	}
	for _, c := range append(commands[:len(commands):len(commands)], internalCommands...) {
		if c.name != name {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		}
		printError(stderr, "imapgate "+name, err)
		return 1
	}
	fmt.Fprintf(stderr, "imapgate: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "imapgate: an IMAP proxy\n\nUsage:")
	for _, c := range commands {
		fmt.Fprintf(w, "  imapgate %-7s %-28s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun imapgate COMMAND -h for a command's flags.")
}

// printError writes err after prefix; an error of several lines (a configuration with
// several problems) gets one line per problem.
func printError(w io.Writer, prefix string, err error) {
	lines := strings.Split(err.Error(), "\n")
	if len(lines) == 1 {
		fmt.Fprintf(w, "%s: %s\n", prefix, lines[0])
		return
	}
	fmt.Fprintf(w, "%s: %d problems:\n", prefix, len(lines))
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

// parseFlags parses args with fs, reporting problems on stderr. Positional arguments are
// refused: every command takes flags only.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "imapgate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}
