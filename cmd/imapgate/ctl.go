package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imapgate/imapgate/admin"
	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
)

// ctlCommands are ctl's subcommands, for its usage text.
const ctlCommands = `Commands:
  sessions [-user U] [-shard S] [-backend B] [-listener L] [-json]
                                  list the live sessions
  kick -user U | -backend B | -shard S | -session ID
                                  end sessions; prints how many
  route [-json] USER              where USER's session would go, and why
  trace [-minutes N] USER         log USER's IMAP traffic for N minutes (default 10; 0 stops)
`

func runCtl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("admin", "http://"+config.DefaultAdminAddress, "`URL` of imapgate's admin API (admin.address)")
	tokenFile := fs.String("token-file", "", "`file` holding the admin API's token (admin.token_file)")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on each request")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: imapgate ctl [-admin URL] [-token-file FILE] COMMAND [flags]\n\n%s\nFlags:\n", ctlCommands)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "imapgate ctl: missing command")
		fs.Usage()
		return errUsage
	}
	c, err := newCtlClient(*base, *tokenFile, *timeout)
	if err != nil {
		return err
	}
	defer c.close()

	sub, rest := fs.Arg(0), fs.Args()[1:]
	switch sub {
	case "sessions":
		return ctlSessions(ctx, c, rest, stdout, stderr)
	case "kick":
		return ctlKick(ctx, c, rest, stdout, stderr)
	case "route":
		return ctlRoute(ctx, c, rest, stdout, stderr)
	case "trace":
		return ctlTrace(ctx, c, rest, stdout, stderr)
	}
	fmt.Fprintf(stderr, "imapgate ctl: unknown command %q\n\n", sub)
	fs.Usage()
	return errUsage
}

// ctlClient calls the admin API.
type ctlClient struct {
	base    *url.URL
	token   string
	timeout time.Duration
	http    *http.Client
}

func newCtlClient(base, tokenFile string, timeout time.Duration) (*ctlClient, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base // "-admin 127.0.0.1:9143"
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-admin %q: want a URL such as http://127.0.0.1:9143", base)
	}
	c := &ctlClient{base: u, timeout: timeout, http: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}}
	if tokenFile != "" {
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = strings.TrimSpace(string(data))
		if c.token == "" {
			return nil, fmt.Errorf("-token-file %s is empty", tokenFile)
		}
	}
	return c, nil
}

func (c *ctlClient) close() { c.http.CloseIdleConnections() }

// do sends a request to path (with query, when not nil) and decodes a 2xx JSON answer into
// out. Other answers become errors carrying the API's message; errBody, when not nil,
// receives the JSON body of an error answer too.
func (c *ctlClient) do(ctx context.Context, method, path string, query url.Values, in, out, errBody any) error {
	u := c.base.JoinPath(path)
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API at %s (is imapgate running with an admin section in its configuration? -admin sets the URL): %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: reading the answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		if errBody != nil {
			_ = json.Unmarshal(data, errBody)
		}
		msg := fmt.Sprintf("admin API: %s: %s", resp.Status, e.Error)
		if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
			msg += " (give the token with -token-file)"
		}
		return errors.New(msg)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin API: unexpected answer from %s: %w", u, err)
	}
	return nil
}

// parseInterspersed parses flags with positional arguments among them ("route -json USER"
// and "route USER -json" alike) and returns the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func ctlSessions(ctx context.Context, c *ctlClient, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl sessions", flag.ContinueOnError)
	filters := map[string]*string{}
	for _, f := range []string{"user", "shard", "backend", "listener"} {
		filters[f] = fs.String(f, "", "only sessions of this "+f)
	}
	asJSON := fs.Bool("json", false, "print the API's JSON")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	q := url.Values{}
	for name, v := range filters {
		if *v != "" {
			q.Set(name, *v)
		}
	}
	var list []proxy.SessionInfo
	if err := c.do(ctx, http.MethodGet, "/api/v1/sessions", q, nil, &list, nil); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, list)
	}
	printSessions(stdout, list, time.Now())
	return nil
}

// printSessions prints sessions as a table.
func printSessions(w io.Writer, list []proxy.SessionInfo, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSER\tCLIENT\tLISTENER\tSHARD\tBACKEND\tAGE\tIN\tOUT\tSTATE")
	for _, s := range list {
		state := s.Command
		switch {
		case !s.LoggedIn:
			state = "pre-auth"
		case s.Idle:
			state = "IDLE"
		case state == "":
			state = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, dash(s.User), s.Client, s.Listener,
			dash(s.Shard), dash(s.Backend), now.Sub(s.Start).Round(time.Second),
			byteCount(s.BytesClientToBackend), byteCount(s.BytesBackendToClient), state)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d session%s (IN: client to backend, OUT: backend to client)\n", len(list), plural(len(list)))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// byteCount formats n as 999 B, 1.2 KiB, 3.4 MiB…
func byteCount(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func ctlKick(ctx context.Context, c *ctlClient, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl kick", flag.ContinueOnError)
	var req admin.KickRequest
	fs.StringVar(&req.User, "user", "", "end this user's sessions")
	fs.StringVar(&req.Backend, "backend", "", "end the sessions on this backend (host:port)")
	fs.StringVar(&req.Shard, "shard", "", "end the sessions on this shard")
	fs.StringVar(&req.Session, "session", "", "end the session with this id")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	n := 0
	for _, v := range []string{req.User, req.Backend, req.Shard, req.Session} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		fmt.Fprintln(stderr, "imapgate ctl kick: give exactly one of -user, -backend, -shard or -session")
		fs.Usage()
		return errUsage
	}
	var resp admin.KickResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/kick", nil, req, &resp, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kicked %d session%s\n", resp.Kicked, plural(resp.Kicked))
	return nil
}

// routeReasons explain routing.Decision.Reason.
var routeReasons = map[string]string{
	"user":     "pinned in routing.users",
	"domain":   "its domain is in routing.domains",
	"wildcard": "a wildcard in routing.domains matches its domain",
	"hash":     "placed by hashing",
}

func ctlRoute(ctx context.Context, c *ctlClient, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl route", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: imapgate ctl route [-json] USER")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	var resp admin.RouteResponse
	var rerr admin.RouteError
	if err := c.do(ctx, http.MethodGet, "/api/v1/route", url.Values{"user": {pos[0]}}, nil, &resp, &rerr); err != nil {
		if rerr.Shard != "" {
			return fmt.Errorf("%s goes to shard %s, which has no backend up: %w", pos[0], rerr.Shard, err)
		}
		return err
	}
	if *asJSON {
		return printJSON(stdout, resp)
	}
	why := routeReasons[resp.Reason]
	if why == "" {
		why = resp.Reason
	}
	fmt.Fprintf(stdout, "%s → shard %s (%s)\n", resp.User, resp.Shard, why)
	if resp.UpstreamUser != "" {
		fmt.Fprintf(stdout, "logs in upstream as %s\n", resp.UpstreamUser)
	}
	fmt.Fprintln(stdout, "backends up, in the order this user tries them:")
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for i, b := range resp.Backends {
		var extra []string
		if b.ForwardClientIP {
			extra = append(extra, "forwards client IP")
		}
		if b.ProxyProtocol != routing.ProxyProtocolOff {
			extra = append(extra, "PROXY "+b.ProxyProtocol.String())
		}
		fmt.Fprintf(tw, "  %d.\t%s\tTLS %s\t%s\n", i+1, b.Address, b.TLS, strings.Join(extra, ", "))
	}
	tw.Flush()
	return nil
}

func ctlTrace(ctx context.Context, c *ctlClient, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl trace", flag.ContinueOnError)
	minutes := fs.Int("minutes", admin.DefaultTraceMinutes, fmt.Sprintf("trace for this many minutes, 1 to %d; 0 stops a trace", admin.MaxTraceMinutes))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: imapgate ctl trace [-minutes N] USER")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	var resp admin.TraceResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/trace", nil, admin.TraceRequest{User: pos[0], Minutes: minutes}, &resp, nil); err != nil {
		return err
	}
	if resp.Stopped || resp.Until == nil {
		fmt.Fprintf(stdout, "trace of %s stopped\n", resp.User)
		return nil
	}
	fmt.Fprintf(stdout, "tracing %s until %s: its sessions' IMAP traffic goes to imapgate's log at info level\n",
		resp.User, resp.Until.Local().Format(time.DateTime))
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
