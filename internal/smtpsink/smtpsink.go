// Package smtpsink is an SMTP server on loopback that accepts and records
// every message (through github.com/emersion/go-smtp), so that the demo and
// the tests talk real SMTP and can audit what was delivered. Faults can be
// switched on to exercise the sender's retries and in-doubt handling.
package smtpsink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Fault is a misbehaviour the sink can be told to show.
type Fault int

const (
	// FaultNone delivers normally.
	FaultNone Fault = iota
	// FaultTempReject answers RCPT with 451: not delivered, retry later.
	FaultTempReject
	// FaultPermReject answers RCPT with 550: not delivered, never will be.
	FaultPermReject
	// FaultDropAfterData records the message and then closes the connection
	// without answering: delivered, but the sender cannot know (in doubt).
	FaultDropAfterData
	// FaultDropAfterAccept records the message, answers 250 and then closes
	// the connection: delivered, and the sender was told, but its next
	// command (RSET, QUIT) fails.
	FaultDropAfterAccept
)

func (f Fault) String() string {
	return [...]string{"none", "temp_reject", "perm_reject", "drop_after_data", "drop_after_accept"}[f]
}

// Message is one recorded delivery.
type Message struct {
	From       string
	To         []string
	MessageID  string // without angle brackets
	Subject    string
	Data       []byte
	ReceivedAt time.Time
}

// Hooks let a test act at precise points of a conversation (for example kill
// the sending process). They run on the connection's goroutine.
type Hooks struct {
	// BeforeMail runs when MAIL FROM arrives, before anything is recorded.
	BeforeMail func()
	// AfterRecord runs once a message is recorded, before the reply is sent.
	AfterRecord func(Message)
}

// Sink is a running SMTP sink.
type Sink struct {
	srv      *smtp.Server
	listener net.Listener
	done     chan struct{}

	mu        sync.Mutex
	messages  []Message
	queued    []Fault // faults for the next conversations, in order
	rate      float64 // share of conversations given rateFault
	rateFault []Fault
	rng       *rand.Rand
	hooks     Hooks
	faults    map[Fault]int
}

// Start listens on a free loopback port.
func Start() (*Sink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("smtpsink: listening: %w", err)
	}
	s := &Sink{listener: l, done: make(chan struct{}), rng: rand.New(rand.NewPCG(1, 2)), faults: map[Fault]int{}}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "sink.localhost"
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 10 << 20
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	// Connections the sender drops (a killed process, a fault) are routine.
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l)
	}()
	return s, nil
}

// Addr is host:port.
func (s *Sink) Addr() string { return s.listener.Addr().String() }

// URL is the SMTP URL mailer.NewSMTP takes to send here.
func (s *Sink) URL() string { return "smtp://" + s.Addr() + "?tls=none&timeout=5s" }

// Close stops the server.
func (s *Sink) Close() error {
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// SetHooks replaces the hooks.
func (s *Sink) SetHooks(h Hooks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = h
}

// FailNext makes each of the next conversations show the given faults, in
// order (one fault per conversation).
func (s *Sink) FailNext(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued = append(s.queued, faults...)
}

// SetFaultRate gives a share rate (0..1) of conversations one of faults,
// chosen at random. Zero switches random faults off.
func (s *Sink) SetFaultRate(rate float64, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rate, s.rateFault = rate, faults
}

// Messages returns a copy of every recorded message.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	copy(out, s.messages)
	return out
}

// Stats summarises the deliveries.
type Stats struct {
	Messages           int // every message recorded
	DistinctMessageIDs int
	Duplicates         int            // Messages - DistinctMessageIDs
	FaultsInjected     map[Fault]int  // by kind
	PerMessageID       map[string]int // deliveries per Message-ID
}

// Stats returns the deliveries summary.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Messages: len(s.messages), PerMessageID: map[string]int{}, FaultsInjected: map[Fault]int{}}
	for _, m := range s.messages {
		st.PerMessageID[m.MessageID]++
	}
	for f, n := range s.faults {
		st.FaultsInjected[f] = n
	}
	st.DistinctMessageIDs = len(st.PerMessageID)
	st.Duplicates = st.Messages - st.DistinctMessageIDs
	return st
}

// WaitFor waits until at least n messages were recorded or ctx ends.
func (s *Sink) WaitFor(ctx context.Context, n int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		got := len(s.messages)
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("smtpsink: %d of %d messages: %w", got, n, ctx.Err())
		case <-t.C:
		}
	}
}

// nextFault picks the fault for a new conversation.
func (s *Sink) nextFault() (Fault, Hooks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := FaultNone
	if len(s.queued) > 0 {
		f, s.queued = s.queued[0], s.queued[1:]
	} else if s.rate > 0 && len(s.rateFault) > 0 && s.rng.Float64() < s.rate {
		f = s.rateFault[s.rng.IntN(len(s.rateFault))]
	}
	if f != FaultNone {
		s.faults[f]++
	}
	return f, s.hooks
}

// NewSession implements smtp.Backend.
func (s *Sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{sink: s, conn: c}, nil
}

type session struct {
	sink        *Sink
	conn        *smtp.Conn
	fault       Fault
	hooks       Hooks
	from        string
	to          []string
	dropOnReset bool
}

// Reset is called after each message's answer was written.
func (se *session) Reset() {
	se.from, se.to = "", nil
	if se.dropOnReset {
		se.dropOnReset = false
		_ = se.conn.Conn().Close()
	}
}

func (se *session) Logout() error { return nil }

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	se.fault, se.hooks = se.sink.nextFault()
	if se.hooks.BeforeMail != nil {
		se.hooks.BeforeMail()
	}
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch se.fault {
	case FaultTempReject:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "sink: temporary failure (injected)"}
	case FaultPermReject:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "sink: no such mailbox (injected)"}
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	msg := Message{From: se.from, To: append([]string(nil), se.to...), Data: data, ReceivedAt: time.Now()}
	if parsed, err := mail.ReadMessage(bytes.NewReader(data)); err == nil {
		msg.MessageID = strings.Trim(strings.TrimSpace(parsed.Header.Get("Message-Id")), "<>")
		msg.Subject = parsed.Header.Get("Subject")
	}
	se.sink.mu.Lock()
	se.sink.messages = append(se.sink.messages, msg)
	se.sink.mu.Unlock()
	if se.hooks.AfterRecord != nil {
		se.hooks.AfterRecord(msg)
	}
	if se.fault == FaultDropAfterAccept {
		se.dropOnReset = true
	}
	if se.fault == FaultDropAfterData {
		// Delivered, and the sender never hears so.
		_ = se.conn.Conn().Close()
		return errors.New("sink: connection dropped after data (injected)")
	}
	return nil
}
