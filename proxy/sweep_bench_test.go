package proxy

import (
	"fmt"
	"net"
	"os"
	"testing"
)

// BenchmarkSweep is one pass of the dormancy sweeper over a proxy holding n spliced
// sessions, of which 1 % have running flows and the rest are dormant (a fleet in IDLE).
// Before the sweeper had its own registry of running flows it walked every session under the
// server's lock, which accepting a connection also needs: 0.41 ms at 10 000 sessions and
// 31 ms at 100 000, every DormantAfter/2.
func BenchmarkSweep(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			srv := New(Options{})
			r, w, err := os.Pipe()
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			rc, err := r.SyscallConn()
			if err != nil {
				b.Fatal(err)
			}
			c1, c2 := net.Pipe() // a quiet running flow gets a read deadline on it
			defer c1.Close()
			defer c2.Close()
			d := newDormancyOn(nopMetrics{})
			srv.dormancy = d
			for i := 0; i < n; i++ {
				sess := &session{srv: srv}
				sp := &spliceState{s: sess}
				for j := range sp.flows {
					f := &flow{sp: sp, src: &endpoint{rc: rc}, srcRaw: c1, shard: uint8(flowShards.Add(1) % runShards)}
					f.state.Store(flowDormant)
					if i%100 == 0 {
						f.state.Store(flowRunning)
						f.busy.Store(true)
						d.running(f, true)
					}
					sp.flows[j] = f
				}
				sess.sp = sp
				srv.sessions[sess] = struct{}{}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				srv.sweepOnce()
			}
		})
	}
}
