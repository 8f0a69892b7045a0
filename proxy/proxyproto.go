package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"

	"github.com/imapgate/imapgate/routing"
	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// This file is the PROXY protocol towards backends (haproxy's proxy-protocol.txt): a header
// with the client's address, written as the connection's first bytes when the backend asks
// for one (routing.Backend.ProxyProtocol), before TLS and before the greeting is read. The
// header is built by github.com/pires/go-proxyproto. Taking PROXY headers from clients
// (behind an L4 balancer) is a listener's concern and comes later (ROADMAP).
//
// A version 2 header for a client that came over TLS also says so, as HAProxy's does when it
// terminates TLS: a PP2_TYPE_SSL TLV (section 2.2.6) with the client bit set and the TLS
// version and cipher, and a PP2_TYPE_AUTHORITY TLV (section 2.2.2) with the server name the
// client asked for (SNI), if any. Dovecot 2.3 takes the first as the client's own TLS: the
// connection counts as secured (disable_plaintext_auth lets it log in, %c says so in the
// log), and the second as the client's local name (%{local_name}). Version 1 has no room
// for either.

// clientTLSInfo is what the backend learns of the client's TLS connection to the proxy.
type clientTLSInfo struct {
	version    string // OpenSSL's spelling, as HAProxy sends it: "TLSv1.3"
	cipher     string // the suite's IANA name (crypto/tls's), e.g. "TLS_AES_128_GCM_SHA256"
	serverName string // SNI, "" if the client sent none
}

// tlsInfoOf describes c's TLS connection, or returns nil when c is not TLS.
func tlsInfoOf(c net.Conn) *clientTLSInfo {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	cs := tc.ConnectionState()
	return &clientTLSInfo{version: openSSLVersion(cs.Version), cipher: tls.CipherSuiteName(cs.CipherSuite), serverName: cs.ServerName}
}

// openSSLVersion spells a TLS version as OpenSSL's SSL_get_version does, which is what
// HAProxy puts in PP2_SUBTYPE_SSL_VERSION and what readers of the header have seen.
func openSSLVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}

// hostnameLike reports whether a client's server name may go to the backend in
// PP2_TYPE_AUTHORITY. The name is the client's own bytes, checked by crypto/tls only for a
// trailing dot: up to 64 KiB of anything. Only what a DNS name may hold goes: at most 253
// bytes (HAProxy caps its authority at 255; Dovecot 2.3 refuses a header over 1 500 bytes,
// which a longer name would make) of letters, digits, '-', '_' and '.' (no control bytes
// for a backend's log).
func hostnameLike(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// tlvs returns the TLVs that say the client used TLS.
func (t *clientTLSInfo) tlvs() ([]proxyproto.TLV, error) {
	ssl := tlvparse.PP2SSL{
		Client: tlvparse.PP2_BITFIELD_CLIENT_SSL,
		// Zero only for a client certificate that was presented and verified (section 2.2.6);
		// the proxy asks for none.
		Verify: 1,
		TLV: []proxyproto.TLV{
			{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte(t.version)},
			{Type: proxyproto.PP2_SUBTYPE_SSL_CIPHER, Value: []byte(t.cipher)},
		},
	}
	tlv, err := ssl.Marshal()
	if err != nil {
		return nil, err
	}
	out := []proxyproto.TLV{tlv}
	if hostnameLike(t.serverName) {
		out = append(out, proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(t.serverName)})
	}
	return out, nil
}

// proxyHeader returns the header of version v announcing ci's client and local addresses,
// and for a version 2 header the client's TLS (above). An address the proxy does not know
// (not TCP) makes a LOCAL header (v2) or "PROXY UNKNOWN" (v1): the backend then keeps the
// connection's own address, as the protocol says.
func proxyHeader(v routing.ProxyProtocol, ci clientInfo) ([]byte, error) {
	if !v.Valid() || v == routing.ProxyProtocolOff {
		// go-proxyproto would make any other number a version 2 header.
		return nil, fmt.Errorf("invalid PROXY protocol version %d", int(v))
	}
	var src, dst net.Addr
	if ci.client.IsValid() && ci.local.IsValid() {
		src = net.TCPAddrFromAddrPort(unmapAddrPort(ci.client))
		dst = net.TCPAddrFromAddrPort(unmapAddrPort(ci.local))
	}
	h := proxyproto.HeaderProxyFromAddrs(byte(v), src, dst)
	if v == routing.ProxyProtocolV2 && ci.tls != nil {
		tlvs, err := ci.tls.tlvs()
		if err == nil {
			err = h.SetTLVs(tlvs)
		}
		if err != nil {
			return nil, err
		}
	}
	return h.Format()
}

// unmapAddrPort turns an IPv4-mapped IPv6 address (a dual-stack listener's IPv4 client) into
// the IPv4 address it stands for, so the header says TCP4.
func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// proxyHeaderFor returns the PROXY header be wants, or nil. It is made before the connection:
// a header the proxy cannot make is its own fault (proxyFaultError), not the backend's, and
// costs the backend no connection.
func proxyHeaderFor(be *routing.Backend, ci clientInfo) ([]byte, error) {
	if be.ProxyProtocol == routing.ProxyProtocolOff {
		return nil, nil
	}
	h, err := proxyHeader(be.ProxyProtocol, ci)
	if err != nil {
		return nil, &proxyFaultError{op: "PROXY header for backend " + be.Address, err: err}
	}
	return h, nil
}
