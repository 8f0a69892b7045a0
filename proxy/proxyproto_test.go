package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/imapgate/imapgate/routing"
	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// The header the proxy sends a backend, read back as a backend reads it.
func TestProxyHeader(t *testing.T) {
	tls13 := &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: "imap.example.org"}
	for _, tc := range []struct {
		name          string
		v             routing.ProxyProtocol
		client, local string
		tls           *clientTLSInfo
		wantText      string // v1's header, "" for v2
		wantSrc       string // "" for a LOCAL header
		wantDst       string
	}{
		{name: "v1 IPv4", v: routing.ProxyProtocolV1, client: "192.0.2.7:51000", local: "198.51.100.1:143",
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v1 IPv6", v: routing.ProxyProtocolV1, client: "[2001:db8::7]:51000", local: "[2001:db8::1]:993",
			wantText: "PROXY TCP6 2001:db8::7 2001:db8::1 51000 993\r\n", wantSrc: "[2001:db8::7]:51000", wantDst: "[2001:db8::1]:993"},
		// A dual-stack listener's IPv4 client is announced as IPv4.
		{name: "v1 mapped", v: routing.ProxyProtocolV1, client: "[::ffff:192.0.2.7]:51000", local: "[::ffff:198.51.100.1]:143",
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 143\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v1 unknown", v: routing.ProxyProtocolV1, wantText: "PROXY UNKNOWN\r\n"},
		// Version 1 has no room for the client's TLS: the same line as without.
		{name: "v1 TLS client", v: routing.ProxyProtocolV1, client: "192.0.2.7:51000", local: "198.51.100.1:993", tls: tls13,
			wantText: "PROXY TCP4 192.0.2.7 198.51.100.1 51000 993\r\n", wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		{name: "v2 IPv4", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:143",
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:143"},
		{name: "v2 IPv6", v: routing.ProxyProtocolV2, client: "[2001:db8::7]:51000", local: "[2001:db8::1]:993",
			wantSrc: "[2001:db8::7]:51000", wantDst: "[2001:db8::1]:993"},
		{name: "v2 unknown", v: routing.ProxyProtocolV2},
		{name: "v2 TLS client", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993", tls: tls13,
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		{name: "v2 TLS client without SNI", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993",
			tls:     &clientTLSInfo{version: "TLSv1.2", cipher: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
		// A client's 60 000-byte server name is no DNS name: left out, the header stays small.
		{name: "v2 TLS client with an overlong SNI", v: routing.ProxyProtocolV2, client: "192.0.2.7:51000", local: "198.51.100.1:993",
			tls:     &clientTLSInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", serverName: strings.Repeat("a", 60000)},
			wantSrc: "192.0.2.7:51000", wantDst: "198.51.100.1:993"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ci := clientInfo{tls: tc.tls}
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
			case tc.wantDst != "" && (got.DestinationAddr == nil || got.DestinationAddr.String() != tc.wantDst):
				t.Errorf("destination %v, want %s", got.DestinationAddr, tc.wantDst)
			}
			if rest, _ := br.ReadString('\n'); rest != "a1 CAPABILITY\r\n" {
				t.Errorf("after the header the reader has %q", rest)
			}
			if len(h) > 300 {
				t.Errorf("header of %d bytes", len(h))
			}
			checkTLSTLVs(t, got, tc.v == routing.ProxyProtocolV2, tc.tls)
		})
	}
}

// checkTLSTLVs checks what a version 2 header says of the client's TLS: PP2_TYPE_SSL with
// the client bit, version and cipher, and PP2_TYPE_AUTHORITY with the SNI; nothing for a
// cleartext client.
func checkTLSTLVs(t *testing.T, h *proxyproto.Header, v2 bool, want *clientTLSInfo) {
	t.Helper()
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatalf("TLVs: %v", err)
	}
	ssl, hasSSL := tlvparse.FindSSL(tlvs)
	var authority string
	for _, tlv := range tlvs {
		if tlv.Type == proxyproto.PP2_TYPE_AUTHORITY {
			authority = string(tlv.Value)
		}
	}
	if !v2 || want == nil {
		if len(tlvs) != 0 {
			t.Errorf("TLVs %v for a cleartext client or a v1 header, want none", tlvs)
		}
		return
	}
	if !hasSSL || !ssl.ClientSSL() || ssl.Verified() || ssl.ClientCertConn() {
		t.Errorf("PP2_TYPE_SSL %+v (found %v), want the client bit only and no verified certificate", ssl, hasSSL)
	}
	if v, _ := ssl.SSLVersion(); v != want.version {
		t.Errorf("SSL version %q, want %q", v, want.version)
	}
	if c, _ := ssl.SSLCipher(); c != want.cipher {
		t.Errorf("SSL cipher %q, want %q", c, want.cipher)
	}
	wantName := want.serverName
	if len(wantName) > maxAuthority {
		wantName = "" // no DNS name: left out
	}
	if authority != wantName {
		t.Errorf("authority %q, want %q", authority, wantName)
	}
}

// A version the protocol does not have is the proxy's own fault, never sent as another one.
func TestProxyHeaderUnknownVersion(t *testing.T) {
	for _, v := range []routing.ProxyProtocol{routing.ProxyProtocolOff, 3, -1} {
		if h, err := proxyHeader(v, clientInfo{}); err == nil {
			t.Errorf("version %d: header %q, want an error", v, h)
		}
	}
	u := &upstream{backend: &routing.Backend{Address: "127.0.0.1:1", ProxyProtocol: 3}}
	var fe *proxyFaultError
	if err := u.sendProxyHeader(clientInfo{}); !errors.As(err, &fe) {
		t.Errorf("sendProxyHeader with version 3: %v, want a *proxyFaultError", err)
	}
}
