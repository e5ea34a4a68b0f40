// Package jobs holds the job kinds this runner ships and their workers:
// welcome emails over SMTP (WelcomeEmailArgs) and payments charged through a
// gateway (ProcessPaymentArgs). Each kind documents its dedupe
// policy: what a duplicate enqueue does, for how long, and across queues.
//
// Register them on a runner's workers:
//
//	workers := river.NewWorkers()
//	jobs.Register(workers, &jobs.Deps{Pool: pool, Mailer: smtp, Gateway: gw})
//	r, err := runner.New(pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil)})
package jobs
