package jobs

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
)

// Deps are what the workers need.
type Deps struct {
	Pool *pgxpool.Pool
	// TxDB is where the email and payment workers begin their transactions:
	// a *runner.Group commits many jobs' transactions together (group
	// commit). Defaults to Pool, one commit per transaction.
	TxDB   runner.Beginner
	Mailer mailer.Sender
	// MailFrom is the sender address. Defaults to "welcome@" + MailDomain.
	MailFrom string
	// MailDomain is the Message-ID domain. Defaults to DomainDefault.
	MailDomain string
	// EmailLeaseFor bounds a send attempt's hold on an email. Defaults to
	// EmailLeaseDefault.
	EmailLeaseFor time.Duration
	// Gateway charges payments. Without it process_payment is not worked.
	Gateway gateway.Gateway
	// Sources are the data sources sync_data reads, by name. Without them
	// sync_data is not worked.
	Sources map[string]datasync.Source
	// SyncPageSize defaults to SyncPageSizeDefault.
	SyncPageSize int
}

// Register adds every worker of this package to workers.
func Register(workers *river.Workers, deps *Deps) error {
	if deps == nil || deps.Pool == nil || deps.Mailer == nil {
		return errors.New("jobs: Deps needs Pool and Mailer")
	}
	if err := river.AddWorkerSafely(workers, &WelcomeEmailWorker{
		Pool: deps.Pool, TxDB: deps.TxDB, Mailer: deps.Mailer, From: deps.MailFrom, Domain: deps.MailDomain, LeaseFor: deps.EmailLeaseFor,
	}); err != nil {
		return err
	}
	// Registered even without a gateway, so that this runner accepts
	// payments; their jobs then wait for a runner that has one.
	if err := river.AddWorkerSafely(workers, &ProcessPaymentWorker{Pool: deps.Pool, TxDB: deps.TxDB, Gateway: deps.Gateway}); err != nil {
		return err
	}
	if len(deps.Sources) > 0 {
		for name := range deps.Sources {
			if !datasync.ValidName(name) {
				return fmt.Errorf("jobs: invalid source name %q: lower-case letters, digits, _ and -", name)
			}
		}
		return river.AddWorkerSafely(workers, &SyncWorker{Pool: deps.Pool, Sources: deps.Sources, PageSize: deps.SyncPageSize})
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
	// Sync defaults to 10.
	Sync int
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
		QueueSync:          {MaxWorkers: or(s.Sync, 10)},
		river.QueueDefault: {MaxWorkers: or(s.Default, 50)},
	}
}
