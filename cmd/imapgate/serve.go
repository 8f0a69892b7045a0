package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"go.uber.org/zap"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", defaultConfig, "configuration `file`")
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
	return serve(ctx, g, log, nil)
}

// gateway is everything a configuration makes, short of listening.
type gateway struct {
	cfg       *config.Config
	table     *routing.Table
	listeners []config.Listener
	server    *proxy.Server
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
	return &gateway{
		cfg:       cfg,
		table:     table,
		listeners: listeners,
		server:    proxy.New(cfg.ProxyOptions(&routing.Static{Table: table}, log)),
	}, nil
}

// serve listens on every listener of g and proxies until ctx is done (the signal) or a
// listener fails, then closes the server, which ends every session. ready, if not nil, is
// called with the bound addresses (in listener order) once all listeners accept.
func serve(ctx context.Context, g *gateway, log *zap.Logger, ready func([]net.Addr)) error {
	lns := make([]net.Listener, 0, len(g.listeners))
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, l := range g.listeners {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", l.Address)
		if err != nil {
			closeAll()
			return fmt.Errorf("listener %s: %w", l.Options.Name, err)
		}
		lns = append(lns, ln)
	}

	errc := make(chan error, len(lns))
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
	if ready != nil {
		ready(addrs)
	}

	var err error
	running := len(lns)
	select {
	case <-ctx.Done():
		log.Info("stopping: signal received")
	case err = <-errc:
		running--
		log.Error("stopping: a listener failed", zap.Error(err))
	}
	closeErr := g.server.Close()
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
