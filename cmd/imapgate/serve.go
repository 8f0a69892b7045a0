package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/imapgate/imapgate/admin"
	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"go.uber.org/zap"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", defaultConfig, "configuration `file`")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on `address` (e.g. 127.0.0.1:6060); off when empty")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log, err := cfg.LoggerTo(stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	g, err := build(cfg, log)
	if err != nil {
		return err
	}
	log.Info("imapgate starting", zap.String("version", version()), zap.String("config", *path))
	if *pprofAddr != "" {
		stopPprof, err := startPprof(*pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	return serve(ctx, g, log, nil)
}

// gateway is everything a configuration makes, short of listening.
type gateway struct {
	cfg       *config.Config
	table     *routing.Table
	listeners []config.Listener
	server    *proxy.Server
	// admin is the admin API's configuration and metrics its metrics; both nil when the
	// configuration has no admin section (the proxy then keeps no metrics).
	admin   *config.Admin
	metrics *admin.Metrics

	// Set by serve.
	adminAddr net.Addr    // where the admin API listens, once it does
	accepting atomic.Bool // every listener accepts connections: GET /readyz
}

// build makes the routing table, loads the certificates and creates the proxy server. It
// reads files but opens no socket: check uses it as is.
func build(cfg *config.Config, log *zap.Logger) (*gateway, error) {
	spec, err := cfg.RoutingSpec()
	if err != nil {
		return nil, err
	}
	table, err := routing.NewTable(spec)
	if err != nil {
		return nil, err
	}
	listeners, err := cfg.Listeners()
	if err != nil {
		return nil, err
	}
	adm, err := cfg.AdminAPI()
	if err != nil {
		return nil, err
	}
	g := &gateway{cfg: cfg, table: table, listeners: listeners, admin: adm}
	opts := cfg.ProxyOptions(&routing.Static{Table: table}, log)
	if adm != nil {
		g.metrics = admin.NewMetrics(admin.MetricsOptions{})
		names := make([]string, 0, len(listeners))
		for _, l := range listeners {
			names = append(names, l.Options.Name)
		}
		backends := make(map[string][]string, len(spec.Shards))
		for _, s := range spec.Shards {
			for _, b := range s.Backends {
				backends[s.Name] = append(backends[s.Name], b.Address)
			}
		}
		g.metrics.Declare(names, backends)
		opts.Metrics = g.metrics
	}
	g.server = proxy.New(opts)
	return g, nil
}

// adminServer returns the admin API over g; its readiness checks are that every listener
// accepts connections and that the routing table is loaded.
func (g *gateway) adminServer(log *zap.Logger) *admin.Server {
	return admin.New(admin.Options{
		Proxy:   g.server,
		Router:  g.table,
		Metrics: g.metrics,
		Checks: []admin.Check{
			{Name: "listeners", Ready: func() error {
				if !g.accepting.Load() {
					return errors.New("not accepting connections (starting or stopping)")
				}
				return nil
			}},
			{Name: "routing", Ready: func() error {
				// The table is built from the configuration before serve starts; a
				// dynamic routing source will report here whether it has loaded.
				if g.table == nil {
					return errors.New("no routing table")
				}
				return nil
			}},
		},
		Token:  g.admin.Token,
		Logger: log.Named("admin"),
	})
}

// serve listens on every listener of g (and the admin API's, when configured) and proxies
// until ctx is done (the signal) or a listener fails, then closes the server, which ends
// every session, and the admin API. ready, if not nil, is called with the bound addresses
// (in listener order) once all listeners accept; g.adminAddr is set by then.
func serve(ctx context.Context, g *gateway, log *zap.Logger, ready func([]net.Addr)) error {
	lns := make([]net.Listener, 0, len(g.listeners))
	var adminLn net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
		if adminLn != nil {
			adminLn.Close()
		}
	}
	for _, l := range g.listeners {
		ln, err := proxy.Listen(ctx, l.Address)
		if err != nil {
			closeAll()
			return fmt.Errorf("listener %s: %w", l.Options.Name, err)
		}
		lns = append(lns, ln)
	}
	if g.admin != nil {
		var err error
		adminLn, err = (&net.ListenConfig{}).Listen(ctx, "tcp", g.admin.Address)
		if err != nil {
			closeAll()
			return fmt.Errorf("admin API: %w", err)
		}
		g.adminAddr = adminLn.Addr()
	}

	errc := make(chan error, len(lns)+1)
	addrs := make([]net.Addr, len(lns))
	for i, ln := range lns {
		l := g.listeners[i]
		addrs[i] = ln.Addr()
		go func() {
			err := g.server.Serve(ln, l.Options)
			if err != nil && !errors.Is(err, proxy.ErrServerClosed) {
				err = fmt.Errorf("listener %s: %w", l.Options.Name, err)
			} else {
				err = nil
			}
			errc <- err
		}()
		log.Info("listening",
			zap.String("listener", l.Options.Name),
			zap.Stringer("address", ln.Addr()),
			zap.Stringer("tls", l.Options.TLS),
			zap.Bool("allow_plaintext_auth", l.Options.AllowPlaintextAuth))
	}
	running := len(lns)
	var api *admin.Server
	if adminLn != nil {
		api = g.adminServer(log)
		running++
		go func() {
			err := api.Serve(adminLn)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			} else {
				err = fmt.Errorf("admin API: %w", err)
			}
			errc <- err
		}()
		log.Info("admin API listening", zap.String("url", "http://"+connectAddr(adminLn.Addr())),
			zap.Bool("token", g.admin.Token != ""))
		if g.admin.Token == "" && !isLoopback(adminLn.Addr()) {
			log.Warn("the admin API is reachable beyond this host and has no token: anyone who reaches it can list and end sessions; set admin.token_file")
		}
	}
	g.accepting.Store(true)
	if ready != nil {
		ready(addrs)
	}

	var err error
	select {
	case <-ctx.Done():
		log.Info("stopping: signal received")
	case err = <-errc:
		running--
		log.Error("stopping: a listener failed", zap.Error(err))
	}
	g.accepting.Store(false)
	closeErr := g.server.Close()
	if api != nil {
		// Requests in progress (a scrape, a kick) get a moment to finish.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if api.Shutdown(sctx) != nil {
			api.Close()
		}
		cancel()
	}
	for ; running > 0; running-- {
		if e := <-errc; err == nil {
			err = e
		}
	}
	if err == nil && closeErr != nil && !errors.Is(closeErr, proxy.ErrServerClosed) {
		err = closeErr
	}
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// isLoopback reports whether addr is a loopback address (127.0.0.0/8, ::1).
func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
