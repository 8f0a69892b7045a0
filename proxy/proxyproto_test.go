package proxy

import (
	"bufio"
	"bytes"
	"net/netip"
	"testing"

	"github.com/imapgate/imapgate/routing"
	"github.com/pires/go-proxyproto"
)

// The header the proxy sends a backend, read back as a backend reads it.
func TestProxyHeader(t *testing.T) {
	for _, tc := range []struct {
		name          string
		v             routing.ProxyProtocol
		client, local string
		wantText      string // v1's header, "" for v2
		wantSrc       string // "" for a LOCAL header
	}{
		{"v1 IPv4", routing.ProxyProtocolV1, "192.0.2.7:51000", "198.51.100.1:143",
			"PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", "192.0.2.7:51000"},
		{"v1 IPv6", routing.ProxyProtocolV1, "[2001:db8::7]:51000", "[2001:db8::1]:993",
			"PROXY TCP6 2001:db8::7 2001:db8::1 51000 993\r\n", "[2001:db8::7]:51000"},
		// A dual-stack listener's IPv4 client is announced as IPv4.
		{"v1 mapped", routing.ProxyProtocolV1, "[::ffff:192.0.2.7]:51000", "[::ffff:198.51.100.1]:143",
			"PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", "192.0.2.7:51000"},
		{"v1 unknown", routing.ProxyProtocolV1, "", "", "PROXY UNKNOWN\r\n", ""},
		{"v2 IPv4", routing.ProxyProtocolV2, "192.0.2.7:51000", "198.51.100.1:143", "", "192.0.2.7:51000"},
		{"v2 IPv6", routing.ProxyProtocolV2, "[2001:db8::7]:51000", "[2001:db8::1]:993", "", "[2001:db8::7]:51000"},
		{"v2 unknown", routing.ProxyProtocolV2, "", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ci clientInfo
			if tc.client != "" {
				ci.client, ci.local = netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.local)
			}
			h, err := proxyHeader(tc.v, ci)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantText != "" && string(h) != tc.wantText {
				t.Errorf("header %q, want %q", h, tc.wantText)
			}
			// The greeting a backend would send next must stay in the reader, unread.
			br := bufio.NewReader(bytes.NewReader(append(h, "a1 CAPABILITY\r\n"...)))
			got, err := proxyproto.Read(br)
			if err != nil {
				t.Fatalf("reading %q back: %v", h, err)
			}
			if got.Version != byte(tc.v) {
				t.Errorf("version %d, want %d", got.Version, tc.v)
			}
			switch {
			case tc.wantSrc == "" && got.Command != proxyproto.LOCAL && got.TransportProtocol != proxyproto.UNSPEC:
				t.Errorf("header for an unknown client says %v %v, want LOCAL or UNKNOWN", got.Command, got.TransportProtocol)
			case tc.wantSrc != "" && (got.SourceAddr == nil || got.SourceAddr.String() != tc.wantSrc):
				t.Errorf("source %v, want %s", got.SourceAddr, tc.wantSrc)
			}
			if rest, _ := br.ReadString('\n'); rest != "a1 CAPABILITY\r\n" {
				t.Errorf("after the header the reader has %q", rest)
			}
		})
	}
}
