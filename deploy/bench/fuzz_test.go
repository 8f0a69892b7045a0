package bench

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzClientResponses feeds arbitrary server bytes to the load generator's response reader
// (readLine, skipLiterals, literalSize, waitTagged, waitContinuation). Whatever a server
// sends, a command must return without panicking, count no more literal bytes than arrived,
// and succeed only on its own tagged OK. A 16-byte read buffer (bufio's smallest) sends
// every longer line down the long-line path. The seed corpus runs in the normal test suite.
func FuzzClientResponses(f *testing.F) {
	for _, seed := range []string{
		"* 1 FETCH (BODY[] {5}\r\nhello)\r\nb1 OK done\r\n+ idling\r\n",
		"* 1 FETCH (BODY[] {3+}\r\nabc {2}\r\nde)\r\n* 2 FETCH (BODY[] {0}\r\n)\r\nb1 OK\r\n",
		"* OK [ALERT] a line longer than the sixteen bytes of the buffer\r\nb1 OK fetched\r\n",
		"* 1 FETCH (BODY[] {99999999999}\r\nshort",
		"* OK {1234567890123}\r\nb1 OK\r\n",
		"b1 NO [UNAVAILABLE] later\r\n",
		"b1 BAD {4}\r\nwhat\r\n",
		"b10 OK not mine\r\nb1OK\r\nb1 OK\r\n",
		"* BYE going away\r\n",
		"b1 OK\r\nb2 NO no idling\r\n",
		"{}\r\n}\r\n{\r\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &Conn{r: bufio.NewReaderSize(bytes.NewReader(data), 16), w: bufio.NewWriter(io.Discard),
			tag: make([]byte, 0, 24)}
		n, err := c.FetchAll() // tagged b1
		if n < 0 || n > int64(len(data)) {
			t.Fatalf("FetchAll counted %d literal bytes of %d received", n, len(data))
		}
		if err == nil && !bytes.Contains(data, []byte("b1 OK")) {
			t.Fatalf("FetchAll succeeded without its tagged OK: %q", data)
		}
		if err := c.Idle(); err == nil && !bytes.Contains(data, []byte("+")) {
			t.Fatalf("Idle succeeded without a continuation request: %q", data)
		}
	})
}
