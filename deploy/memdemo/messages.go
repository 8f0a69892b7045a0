package memdemo

import (
	"fmt"
	"strings"
	"time"
)

// sample is one of the message templates SampleMessage cycles through.
type sample struct {
	from, subject, body string
}

var samples = []sample{
	{
		from:    `"imapgate demo" <demo@imapgate.example>`,
		subject: "Welcome to imapgate",
		body: `Hello %[1]s,

this message lives on shard "%[2]s". You are reading it through imapgate,
which looked up your shard when you logged in, logged in to the backend
for you and then got out of the way: every byte since has been copied
between your client and the backend unchanged.

Try logging in as a user of the other shard: same proxy, other server.

-- 
imapgate demo
`,
	},
	{
		from:    `Marta Kowalski <marta@example.net>`,
		subject: "Lunch on Thursday?",
		body: `Hi,

are you free for lunch on Thursday? The new place on Rue Lafayette
has a decent set menu. 12:30 would suit me best.

Marta
`,
	},
	{
		from:    `Build Robot <ci@builds.example.net>`,
		subject: "[ci] main: all checks passed",
		body: `Pipeline #%[3]d on main finished.

  go vet ./...          ok
  go test -race ./...   ok   (412 tests)
  fuzz seeds            ok

Duration: 3m12s

You get this message because you watch main.
`,
	},
}

// SampleMessage returns the i-th sample message for user (RFC 5322, CRLF line endings) and
// its date. shard is named in the first template's text. The result depends only on the
// arguments.
func SampleMessage(user, shard string, i int) ([]byte, time.Time) {
	s := samples[i%len(samples)]
	subject := s.subject
	if i >= len(samples) {
		subject = fmt.Sprintf("%s (%d)", subject, i/len(samples)+1)
	}
	date := sampleEpoch.Add(time.Duration(i) * 26 * time.Hour)
	body := s.body
	if strings.Contains(body, "%[") {
		body = fmt.Sprintf(body, user, shard, 1000+i)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Date: %s\r\n", date.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "From: %s\r\n", s.from)
	fmt.Fprintf(&b, "To: <%s>\r\n", user)
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Message-ID: <%d.%d@%s.imapgate.example>\r\n", date.Unix(), i, shard)
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Transfer-Encoding: 8bit\r\n")
	b.WriteString("\r\n")
	b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
	return []byte(b.String()), date
}
