package proxy

import (
	"net"
	"syscall"
	"time"
)

// keepAliveIdle is how long a client or backend connection stays silent before TCP
// keepalive probes it, at the system's interval and count (net.ipv4.tcp_keepalive_intvl,
// tcp_keepalive_probes). Go's default (15 s, with its own interval and count) would probe
// every idle IMAP session four times a minute. Dovecot's IDLE sends "* OK Still here" every
// 2 minutes anyway (imap_idle_notify_interval), which finds dead clients sooner.
const keepAliveIdle = 5 * time.Minute

// ListenConfig returns the net.ListenConfig for client listeners. The keepalive is set once
// on the listening socket, and Linux gives every accepted connection the listener's
// SO_KEEPALIVE and TCP_KEEPIDLE (the child socket is cloned from the listener,
// inet_csk_clone_lock; a test pins it): no setsockopt per accepted connection, where Go's
// own keepalive makes two. Go still sets TCP_NODELAY on each.
func ListenConfig() *net.ListenConfig {
	return &net.ListenConfig{KeepAlive: -1, Control: listenerKeepAlive}
}

// listenerKeepAlive sets keepAliveIdle on a listening socket before it listens.
func listenerKeepAlive(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1); serr != nil {
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAliveIdle/time.Second))
	})
	if err != nil {
		return err
	}
	return serr
}
