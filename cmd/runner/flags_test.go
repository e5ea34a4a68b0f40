package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// Values from the environment (tokens, passwords in URLs) never appear in
// help or usage errors; they still set the flags, and the command line wins.
func TestFlags_EnvironmentValuesStayOutOfHelp(t *testing.T) {
	t.Setenv("API_TOKENS", "shop:0123456789abcdef-secret")
	t.Setenv("DATABASE_URL", "postgres://app:db-password-secret@db/app")
	t.Setenv("ADMIN_CREDENTIALS", "ops:admin-password-secret")
	for _, args := range [][]string{{"serve", "-h"}, {"serve", "--no-such-flag"}, {"migrate", "-h"}, {"inspect", "-h"}} {
		var stdout, stderr bytes.Buffer
		run(context.Background(), args, &stdout, &stderr)
		require.NotContains(t, stdout.String()+stderr.String(), "secret", "%v", args)
	}

	fs := newFlags("test", "")
	url := fs.string("database-url", "DATABASE_URL", "", "")
	require.NoError(t, fs.parse(nil))
	require.Equal(t, "postgres://app:db-password-secret@db/app", *url)

	fs = newFlags("test", "")
	url = fs.string("database-url", "DATABASE_URL", "", "")
	require.NoError(t, fs.parse([]string{"--database-url", "postgres://other/db"}))
	require.Equal(t, "postgres://other/db", *url)

	t.Setenv("EMAIL_WORKERS", "many")
	fs = newFlags("test", "")
	fs.int("email-workers", "EMAIL_WORKERS", 50, "")
	require.ErrorContains(t, fs.parse(nil), `EMAIL_WORKERS="many": not an integer`)
}
