package jobs

import (
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/mailer"
)

// Deps are what the workers need.
type Deps struct {
	Pool   *pgxpool.Pool
	Mailer mailer.Sender
	// MailFrom is the sender address. Defaults to "welcome@" + MailDomain.
	MailFrom string
	// MailDomain is the Message-ID domain. Defaults to DomainDefault.
	MailDomain string
	// Gateway charges payments. Without it process_payment is not worked.
	Gateway gateway.Gateway
}

// Register adds every worker of this package to workers.
func Register(workers *river.Workers, deps *Deps) error {
	if deps == nil || deps.Pool == nil || deps.Mailer == nil {
		return errors.New("jobs: Deps needs Pool and Mailer")
	}
	if err := river.AddWorkerSafely(workers, &WelcomeEmailWorker{
		Pool: deps.Pool, Mailer: deps.Mailer, From: deps.MailFrom, Domain: deps.MailDomain,
	}); err != nil {
		return err
	}
	if deps.Gateway != nil {
		return river.AddWorkerSafely(workers, &ProcessPaymentWorker{Pool: deps.Pool, Gateway: deps.Gateway})
	}
	return nil
}

// QueueSizes sets how many jobs each queue of this package works at once.
// Zero fields take their defaults.
type QueueSizes struct {
	// Email defaults to 50.
	Email int
	// Payment defaults to 50.
	Payment int
	// Default is river.QueueDefault, for users' own kinds. Defaults to 50.
	Default int
}

// Queues returns the runner queue configuration for this package's jobs
// (plus River's default queue, for users' own job kinds).
func Queues(sizes *QueueSizes) map[string]river.QueueConfig {
	s := QueueSizes{}
	if sizes != nil {
		s = *sizes
	}
	or := func(n, def int) int {
		if n > 0 {
			return n
		}
		return def
	}
	return map[string]river.QueueConfig{
		QueueEmail:         {MaxWorkers: or(s.Email, 50)},
		QueuePayment:       {MaxWorkers: or(s.Payment, 50)},
		river.QueueDefault: {MaxWorkers: or(s.Default, 50)},
	}
}
