package signup_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/signup"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"ada@example.com":                        "ada@example.com",
		"  Ada@Example.COM \n":                   "Ada@example.com", // the domain is lower-cased
		"a.b+tag@sub.example.io":                 "a.b+tag@sub.example.io",
		"root@localhost":                         "root@localhost",
		strings.Repeat("a", 64) + "@example.com": strings.Repeat("a", 64) + "@example.com",
	} {
		got, err := signup.NormalizeEmail(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got)
	}
	for _, bad := range []string{"", " ", "ada", "ada@", "@example.com", "Ada <ada@example.com>", "<ada@example.com>",
		"ada@example", "a b@example.com", strings.Repeat("a", 250) + "@example.com", "ada@@example.com",
		strings.Repeat("a", 65) + "@example.com"} {
		_, err := signup.NormalizeEmail(bad)
		require.ErrorIs(t, err, signup.ErrInvalidEmail, "%q", bad)
	}
	require.ErrorIs(t, signup.ValidateName(strings.Repeat("é", 201)), signup.ErrInvalidName)
	require.NoError(t, signup.ValidateName(strings.Repeat("é", 200)))
	require.ErrorIs(t, signup.ValidateName("\xff"), signup.ErrInvalidName)
}

// The database, not the application, keeps one user per address in any case.
func TestFindOrCreate_CaseInsensitive(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	var first, second *signup.User
	var created1, created2 bool
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var err error
		first, created1, err = signup.FindOrCreate(ctx, tx, "Ada@Example.com", "Ada")
		if err != nil {
			return err
		}
		second, created2, err = signup.FindOrCreate(ctx, tx, "ada@example.COM", "other")
		return err
	}))
	require.True(t, created1)
	require.False(t, created2)
	require.Equal(t, first.ID, second.ID)
	require.Equal(t, "Ada", second.Name)

	_, err := db.Pool.Exec(ctx, `INSERT INTO users (email) VALUES ('ADA@EXAMPLE.COM')`)
	require.Error(t, err, "the unique index on lower(email) refuses a second row")

	u, err := signup.Get(ctx, db.Pool, first.ID)
	require.NoError(t, err)
	require.Equal(t, "Ada@Example.com", u.Email)
	_, err = signup.Get(ctx, db.Pool, 424242)
	require.ErrorIs(t, err, signup.ErrUserNotFound)
}

// Case-insensitive in every script, whatever the database's LC_CTYPE (the
// test server runs with C, where plain lower() lowers ASCII only).
func TestFindOrCreate_CaseInsensitiveBeyondASCII(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	var ctype string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT datctype FROM pg_database WHERE datname = current_database()`).Scan(&ctype))
	t.Logf("database LC_CTYPE %s", ctype)
	for _, pair := range [][2]string{
		{"Émile@example.com", "émile@example.com"},
		{"ΣΑΣ@example.com", "σας@example.com"},
		{"ИВАН@example.com", "иван@example.com"},
	} {
		var first, second *signup.User
		var created bool
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			first, _, err = signup.FindOrCreate(ctx, tx, pair[0], "")
			if err != nil {
				return err
			}
			second, created, err = signup.FindOrCreate(ctx, tx, pair[1], "")
			return err
		}))
		require.False(t, created, "%s and %s made two users", pair[0], pair[1])
		require.Equal(t, first.ID, second.ID)
		_, err := db.Pool.Exec(ctx, `INSERT INTO users (email) VALUES ($1)`, pair[1])
		require.Error(t, err, "the unique index refuses %s beside %s", pair[1], pair[0])
	}
}
