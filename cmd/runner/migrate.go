package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/olekukonko/tablewriter"
	"github.com/pressly/goose/v3"

	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/schema"
)

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", "Usage: runner migrate up|down|status [flags]\n\n"+
		"  up      apply every pending migration (River's tables included)\n"+
		"  down    roll back the latest migration (use --to 0 to remove everything)\n"+
		"  status  list migrations and whether each is applied")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "DATABASE_URL", "", "PostgreSQL URL (required)")
	to := fs.int("to", "", -1, "down: roll back to this version instead of one step")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if err := fs.parse(args); err != nil {
			return err // -h and --help end here
		}
		fs.Usage()
		return fmt.Errorf("%w: missing up, down or status", errUsage)
	}
	action := args[0]
	if err := fs.parse(args[1:]); err != nil {
		return err
	}
	if *databaseURL == "" {
		return fmt.Errorf("%w: set DATABASE_URL or --database-url", errUsage)
	}
	pool, err := runner.NewPool(ctx, *databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := schema.NewProvider(db)
	if err != nil {
		return err
	}

	var results []*goose.MigrationResult
	switch action {
	case "up":
		results, err = p.Up(ctx)
	case "down":
		if *to >= 0 {
			results, err = p.DownTo(ctx, int64(*to))
		} else {
			var res *goose.MigrationResult
			res, err = p.Down(ctx)
			if res != nil {
				results = append(results, res)
			}
		}
	case "status":
		return printStatus(ctx, p, stdout)
	default:
		return fmt.Errorf("%w: unknown migrate action %q (want up, down or status)", errUsage, action)
	}
	for _, r := range results {
		fmt.Fprintf(stdout, "%-4s %s (%s)\n", r.Direction, migrationName(r.Source), r.Duration.Round(1e6))
	}
	if err != nil {
		return err
	}
	if len(results) == 0 {
		fmt.Fprintln(stdout, "nothing to do")
	}
	return nil
}

func printStatus(ctx context.Context, p *goose.Provider, w io.Writer) error {
	statuses, err := p.Status(ctx)
	if err != nil {
		return err
	}
	t := tablewriter.NewWriter(w)
	t.Header("version", "migration", "state", "applied at")
	for _, s := range statuses {
		applied := ""
		if !s.AppliedAt.IsZero() {
			applied = s.AppliedAt.Format("2006-01-02 15:04:05")
		}
		_ = t.Append(strconv.FormatInt(s.Source.Version, 10), migrationName(s.Source), string(s.State), applied)
	}
	return t.Render()
}

func migrationName(src *goose.Source) string {
	if src.Path == "" {
		return "(go) River schema v" + strconv.Itoa(schema.RiverMigrationVersion)
	}
	return src.Path
}
