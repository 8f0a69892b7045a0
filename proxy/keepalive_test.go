package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestAcceptedConnInheritsKeepAlive pins what ListenConfig relies on: a connection accepted
// on its listener has SO_KEEPALIVE on and TCP_KEEPIDLE at keepAliveIdle without a
// setsockopt of its own, and TCP_NODELAY as Go sets it.
func TestAcceptedConnInheritsKeepAlive(t *testing.T) {
	ln, err := ListenConfig().Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	raw, err := a.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct{ level, opt, val int }{
		"SO_KEEPALIVE": {syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		"TCP_KEEPIDLE": {syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAliveIdle / time.Second)},
		"TCP_NODELAY":  {syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	}
	for name, w := range want {
		var got int
		var gerr error
		if err := raw.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), w.level, w.opt) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatalf("%s: %v", name, gerr)
		}
		if got != w.val {
			t.Errorf("accepted connection: %s = %d, want %d", name, got, w.val)
		}
	}
}
