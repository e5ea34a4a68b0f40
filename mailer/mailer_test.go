package mailer_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/mailer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewSMTP_URL(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{
		"smtp://mail.example.com", "smtp://u:p@mail.example.com:2525?tls=starttls", "smtps://mail.example.com",
		"smtp://127.0.0.1:25?tls=none&timeout=3s",
	} {
		_, err := mailer.NewSMTP(ok)
		require.NoError(t, err, ok)
	}
	for _, bad := range []string{
		"http://mail.example.com", "smtp://", "smtp://h?tls=maybe", "smtp://h?timeout=soon", "smtp://h:port", "smtp://h?timeout=-1s",
		"smtp://h?tsl=none", "smtp://h?tls=starttls&bogus=1", "smtps://h?tls=none",
	} {
		_, err := mailer.NewSMTP(bad)
		require.Error(t, err, bad)
	}
}

// Each failure says whether the message may have been delivered.
func TestSMTP_Send(t *testing.T) {
	t.Parallel()
	sink, err := smtpsink.Start()
	require.NoError(t, err)
	defer sink.Close()
	m, err := mailer.NewSMTP(sink.URL())
	require.NoError(t, err)
	msg := &mailer.Message{MessageID: "id-1@test", From: "a@example.com", To: "b@example.com", Subject: "hi", Text: "hello",
		Headers: map[string]string{"X-Test": "1"}}
	ctx := context.Background()

	require.NoError(t, m.Send(ctx, msg))
	got := sink.Messages()
	require.Len(t, got, 1)
	require.Equal(t, "id-1@test", got[0].MessageID)
	require.Equal(t, "hi", got[0].Subject)

	tests := []struct {
		fault           smtpsink.Fault
		inDoubt, perm   bool
		deliveredInSink bool
	}{
		{smtpsink.FaultTempReject, false, false, false},
		{smtpsink.FaultPermReject, false, true, false},
		{smtpsink.FaultDropAfterData, true, false, true},
	}
	for _, tt := range tests {
		before := len(sink.Messages())
		sink.FailNext(tt.fault)
		err := m.Send(ctx, msg)
		require.Error(t, err, tt.fault.String())
		require.Equal(t, tt.inDoubt, errors.Is(err, mailer.ErrInDoubt), "%s: %v", tt.fault, err)
		require.Equal(t, tt.perm, errors.Is(err, mailer.ErrPermanent), "%s: %v", tt.fault, err)
		require.Equal(t, tt.deliveredInSink, len(sink.Messages()) > before, tt.fault.String())
	}

	// Accepted, then the connection drops before RSET: delivered, no error.
	before := len(sink.Messages())
	sink.FailNext(smtpsink.FaultDropAfterAccept)
	require.NoError(t, m.Send(ctx, msg))
	require.Len(t, sink.Messages(), before+1)

	// Nothing listening: not sent, not in doubt.
	require.NoError(t, sink.Close())
	err = m.Send(ctx, msg)
	require.Error(t, err)
	require.False(t, errors.Is(err, mailer.ErrInDoubt))

	require.ErrorIs(t, m.Send(ctx, &mailer.Message{From: "not an address", To: "b@example.com"}), mailer.ErrPermanent)
}
