//go:build !linux

package bench

import (
	"context"
	"errors"
	"net"
)

// RunLoopRelay needs Linux (epoll).
func RunLoopRelay(ctx context.Context, ln *net.TCPListener, to string) error {
	ln.Close()
	return errors.ErrUnsupported
}

// RunLoopLogin needs Linux (epoll).
func RunLoopLogin(ctx context.Context, ln *net.TCPListener, to string, proxyHeader bool) error {
	ln.Close()
	return errors.ErrUnsupported
}
