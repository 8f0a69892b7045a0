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
// setsockopt of its own, and TCP_NODELAY (set per connection: Linux does not copy it). Both
// ways of accepting are pinned: Go's (ListenConfig's listener) and Listen's.
func TestAcceptedConnInheritsKeepAlive(t *testing.T) {
	for name, listen := range map[string]func() (net.Listener, error){
		"net": func() (net.Listener, error) {
			return ListenConfig().Listen(context.Background(), "tcp", "127.0.0.1:0")
		},
		"raw": func() (net.Listener, error) { return Listen(context.Background(), "127.0.0.1:0") },
	} {
		t.Run(name, func(t *testing.T) {
			ln, err := listen()
			if err != nil {
				t.Fatal(err)
			}
			_, a := connPair(t, ln, netDial)
			checkSockopts(t, a)
		})
	}
}

// TestDialedConnKeepAlive: a backend connection gets keepAliveIdle (SO_KEEPALIVE and
// TCP_KEEPIDLE, the system's interval and count) and TCP_NODELAY.
func TestDialedConnKeepAlive(t *testing.T) {
	c, _ := connPair(t, tcpListener(t), rawDial)
	checkSockopts(t, c)
}

func checkSockopts(t *testing.T, c net.Conn) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
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
			t.Errorf("%s = %d, want %d", name, got, w.val)
		}
	}
}
