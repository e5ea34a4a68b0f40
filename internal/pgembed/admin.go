package pgembed

import (
	"context"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
)

// WithDatabase returns the connection string u (a URL, or the keyword/value
// form "host=... dbname=...") naming database name instead.
func WithDatabase(u, name string) string {
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme == "" {
		return strings.TrimSpace(u) + " dbname=" + name
	}
	parsed.Path = "/" + name
	return parsed.String()
}

// AdminExec runs sql on a connection of its own to u: for CREATE DATABASE and
// DROP DATABASE, which cannot run in a transaction.
func AdminExec(ctx context.Context, u, sql string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}
