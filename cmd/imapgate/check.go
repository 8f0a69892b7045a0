package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
)

// certWarning is how close to expiry a certificate gets a warning in check's summary.
const certWarning = 30 * 24 * time.Hour

func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("config", defaultConfig, "configuration `file`")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if _, err := cfg.LoggerTo(io.Discard); err != nil {
		return err
	}
	g, err := build(cfg, zap.NewNop())
	if err != nil {
		return err
	}
	leaf, err := serverLeaf(g)
	if err != nil {
		return err
	}
	summarize(stdout, *path, g, leaf, time.Now())
	return nil
}

// serverLeaf returns the listeners' certificate, nil when no listener uses TLS, and fails
// when it has expired or is not valid yet: clients would refuse it.
func serverLeaf(g *gateway) (*x509.Certificate, error) {
	for _, l := range g.listeners {
		if l.Options.TLSConfig == nil || len(l.Options.TLSConfig.Certificates) == 0 {
			continue
		}
		cert := l.Options.TLSConfig.Certificates[0]
		leaf := cert.Leaf
		if leaf == nil {
			var err error
			if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("tls.cert_file: %w", err)
			}
		}
		now := time.Now()
		if now.After(leaf.NotAfter) {
			return nil, fmt.Errorf("tls.cert_file: %s: certificate expired on %s", g.cfg.Path(g.cfg.TLS.CertFile), leaf.NotAfter.Format(time.DateOnly))
		}
		if now.Before(leaf.NotBefore) {
			return nil, fmt.Errorf("tls.cert_file: %s: certificate not valid before %s", g.cfg.Path(g.cfg.TLS.CertFile), leaf.NotBefore.Format(time.RFC3339))
		}
		return leaf, nil
	}
	return nil, nil
}

// summarize prints what the configuration makes: listeners, certificate, shards with their
// backends, user and domain counts.
func summarize(w io.Writer, path string, g *gateway, leaf *x509.Certificate, now time.Time) {
	cfg := g.cfg
	fmt.Fprintf(w, "%s: OK\n\n", path)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "listeners (%d):\n", len(g.listeners))
	for _, l := range g.listeners {
		o := l.Options
		var what []string
		switch o.TLS {
		case tlsconf.None:
			what = append(what, "cleartext")
		case tlsconf.STARTTLS:
			what = append(what, "STARTTLS")
		case tlsconf.Implicit:
			what = append(what, "implicit TLS")
		}
		if o.TLS != tlsconf.Implicit {
			if o.AllowPlaintextAuth {
				what = append(what, "plaintext login allowed")
			} else {
				what = append(what, "login only after TLS")
			}
		}
		if o.PreAuthTimeout > 0 {
			what = append(what, "pre-auth timeout "+o.PreAuthTimeout.String())
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", o.Name, l.Address, strings.Join(what, ", "))
	}
	tw.Flush()
	if leaf != nil {
		names := append(append([]string(nil), leaf.DNSNames...), ipStrings(leaf)...)
		fmt.Fprintf(w, "  certificate: %s\n    for %s, expires %s", cfg.Path(cfg.TLS.CertFile),
			strings.Join(names, ", "), leaf.NotAfter.Format(time.DateOnly))
		if left := leaf.NotAfter.Sub(now); left < certWarning {
			fmt.Fprintf(w, " (WARNING: in %d days)", int(left.Hours()/24))
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\nshards (%d):\n", len(cfg.Routing.Shards))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, s := range cfg.Routing.Shards {
		weight := s.Weight
		if weight == 0 {
			weight = 1
		}
		n := len(s.Backends)
		// A line without tabs ends a tabwriter column block: each shard's backends are
		// aligned on their own.
		fmt.Fprintf(tw, "  %s: weight %g, %d backend%s\n", s.Name, weight, n, plural(n))
		for _, b := range s.Backends {
			fmt.Fprintf(tw, "    %s\t%s\n", b.Address, describeBackend(cfg, b))
		}
	}
	tw.Flush()

	var wildcards int
	for d := range cfg.Routing.Domains {
		if strings.HasPrefix(d, "*.") {
			wildcards++
		}
	}
	fmt.Fprintf(w, "\nusers: %d pinned to a shard\ndomains: %d (%d wildcard)\n", len(cfg.Routing.Users), len(cfg.Routing.Domains), wildcards)
	fmt.Fprintln(w, "everyone else: hashed over the shards by weight")
}

func describeBackend(cfg *config.Config, b config.BackendConfig) string {
	var parts []string
	switch b.TLS {
	case tlsconf.None:
		parts = append(parts, "cleartext")
	case tlsconf.STARTTLS, tlsconf.Implicit:
		mode := "STARTTLS"
		if b.TLS == tlsconf.Implicit {
			mode = "implicit TLS"
		}
		switch {
		case b.InsecureSkipVerify:
			parts = append(parts, mode+", certificate NOT verified")
		default:
			name := b.ServerName
			if name == "" {
				name, _, _ = net.SplitHostPort(b.Address) // as config.RoutingSpec does
			}
			roots := "system roots"
			if b.CAFile != "" {
				roots = "CA " + cfg.Path(b.CAFile)
			}
			parts = append(parts, fmt.Sprintf("%s, verified as %s (%s)", mode, name, roots))
		}
	}
	if b.ForwardClientIP {
		parts = append(parts, "forwards client IP")
	}
	if b.ProxyProtocol != routing.ProxyProtocolOff {
		parts = append(parts, "sends PROXY protocol "+b.ProxyProtocol.String())
	}
	return strings.Join(parts, ", ")
}

func ipStrings(c *x509.Certificate) []string {
	var out []string
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
