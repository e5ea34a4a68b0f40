// Package mailer sends email over SMTP (through github.com/wneessen/go-mail)
// and says, when a send fails, whether the message may have been delivered
// anyway: that is what decides whether a retry is a possible duplicate.
//
//	m, err := mailer.NewSMTP("smtp://user:pass@mail.example.com:587")
//	err = m.Send(ctx, &mailer.Message{MessageID: "welcome.42@example.com", ...})
//	switch {
//	case errors.Is(err, mailer.ErrInDoubt):   // the server may hold it: retry with the same MessageID
//	case errors.Is(err, mailer.ErrPermanent): // rejected for good: do not retry
//	}
package mailer

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/wneessen/go-mail"
)

var (
	// ErrInDoubt marks a failure after the message data was sent without the
	// server's answer arriving: the server may have accepted it.
	ErrInDoubt = errors.New("mailer: delivery in doubt")

	// ErrPermanent marks a rejection with a permanent (5xx) SMTP code: the
	// message was not accepted and retrying will not help.
	ErrPermanent = errors.New("mailer: rejected permanently")
)

// Message is one email.
type Message struct {
	// MessageID is the Message-ID header without angle brackets. Reuse it for
	// every retry of the same email so that receivers can drop copies.
	MessageID string
	From      string
	To        string
	Subject   string
	Text      string
	// Headers are extra headers, such as a request id.
	Headers map[string]string
}

// Sender sends email.
type Sender interface {
	Send(ctx context.Context, msg *Message) error
}

// SMTPTimeoutDefault bounds each SMTP conversation.
const SMTPTimeoutDefault = 15 * time.Second

// SMTP sends through an SMTP server, one connection per message.
type SMTP struct {
	host    string
	options []mail.Option
}

// NewSMTP returns a sender for rawURL:
//
//	smtp://[user:password@]host[:port][?tls=none|opportunistic|starttls&timeout=15s]
//	smtps://[user:password@]host[:port]
//
// smtp:// defaults to port 587 and opportunistic STARTTLS; smtps:// to port
// 465 and implicit TLS. tls=none never uses TLS (a local sink, a test server).
func NewSMTP(rawURL string) (*SMTP, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("mailer: parsing SMTP URL: %w", err)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("mailer: SMTP URL %q has no host", redact(u))
	}
	q := u.Query()
	for name := range q {
		if name != "tls" && name != "timeout" {
			// A misspelt option would silently weaken the connection.
			return nil, fmt.Errorf("mailer: SMTP URL option %q unknown: want tls or timeout", name)
		}
	}
	if u.Scheme == "smtps" && q.Has("tls") {
		return nil, errors.New("mailer: smtps:// always uses TLS: drop the tls option")
	}
	timeout := SMTPTimeoutDefault
	if t := q.Get("timeout"); t != "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout <= 0 {
			return nil, fmt.Errorf("mailer: SMTP URL timeout %q is not a positive duration", t)
		}
	}
	opts := []mail.Option{mail.WithTimeout(timeout), mail.WithHELO("localhost")}
	port := 587
	switch u.Scheme {
	case "smtp":
		switch q.Get("tls") {
		case "", "opportunistic":
			opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
		case "starttls":
			opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
		case "none":
			opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
		default:
			return nil, fmt.Errorf("mailer: SMTP URL tls=%q: want none, opportunistic or starttls", q.Get("tls"))
		}
	case "smtps":
		port = 465
		opts = append(opts, mail.WithSSL())
	default:
		return nil, fmt.Errorf("mailer: SMTP URL scheme %q: want smtp or smtps", u.Scheme)
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("mailer: SMTP URL port %q: %w", p, err)
		}
	}
	opts = append(opts, mail.WithPort(port))
	if u.User != nil {
		pass, _ := u.User.Password()
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover),
			mail.WithUsername(u.User.Username()), mail.WithPassword(pass))
	}
	return &SMTP{host: u.Hostname(), options: opts}, nil
}

// Send delivers msg. Its error wraps ErrInDoubt when the server may have
// accepted the message, and ErrPermanent when it refused it for good.
func (s *SMTP) Send(ctx context.Context, msg *Message) error {
	m := mail.NewMsg()
	if err := m.From(msg.From); err != nil {
		return fmt.Errorf("%w: from address: %w", ErrPermanent, err)
	}
	if err := m.To(msg.To); err != nil {
		return fmt.Errorf("%w: to address: %w", ErrPermanent, err)
	}
	m.SetMessageIDWithValue(msg.MessageID)
	m.Subject(msg.Subject)
	m.SetDate()
	for k, v := range msg.Headers {
		m.SetGenHeader(mail.Header(k), v)
	}
	m.SetBodyString(mail.TypeTextPlain, msg.Text)

	client, err := mail.NewClient(s.host, s.options...)
	if err != nil {
		return fmt.Errorf("mailer: %w", err)
	}
	conn, err := client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return fmt.Errorf("mailer: connecting: %w", err)
	}
	sendErr := client.SendWithSMTPClient(conn, m)
	// Once the server accepted the data, a failing RSET or QUIT changes
	// nothing: the message is delivered.
	_ = client.CloseWithSMTPClient(conn)
	if sendErr != nil && !m.IsDelivered() {
		return classify(sendErr)
	}
	return nil
}

// classify wraps a go-mail send error with ErrInDoubt or ErrPermanent.
func classify(err error) error {
	var se *mail.SendError
	if !errors.As(err, &se) {
		return fmt.Errorf("mailer: %w", err)
	}
	code := se.ErrorCode()
	switch {
	case se.Reason == mail.ErrSMTPDataClose && code == 0:
		// The final "." went out and no reply came back.
		return fmt.Errorf("%w: %w", ErrInDoubt, err)
	case code >= 500 && !se.IsTemp():
		return fmt.Errorf("%w: %w", ErrPermanent, err)
	}
	return fmt.Errorf("mailer: %w", err)
}

func redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}
