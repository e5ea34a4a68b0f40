// Package signup signs users up: it finds or creates the user by email and
// enqueues the welcome email in the same transaction, so a user never exists
// without their welcome email on its way, and a resubmitted signup never
// sends a second one.
//
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		res, err = signup.Signup(ctx, tx, r, "ada@example.com", "Ada", jobs.DomainDefault)
//		return err
//	})
package signup

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"

	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

// EmailTypeWelcome is the email type of the welcome email.
const EmailTypeWelcome = "welcome"

// NameMaxLength is the longest accepted name, in characters.
const NameMaxLength = 200

var (
	// ErrInvalidEmail is returned for an address that is not a plain
	// addr-spec (local@domain) of at most 254 bytes.
	ErrInvalidEmail = errors.New("signup: invalid email address")
	// ErrInvalidName is returned for a name too long or not valid UTF-8.
	ErrInvalidName = errors.New("signup: invalid name")
	// ErrUserNotFound is returned by Get for an unknown id.
	ErrUserNotFound = errors.New("signup: user not found")
)

// User is a users row.
type User struct {
	ID        int64     `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// NormalizeEmail trims s, checks that it is a bare address such as
// "ada@example.com" (no display name, no angle brackets), and returns it in
// one spelling: an internationalised domain in ASCII (punycode) and lower
// case, the local part in Unicode NFC. (The local part's case is kept; users
// are unique by lower(email) anyway.)
func NormalizeEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidEmail)
	}
	if len(s) > 254 {
		return "", fmt.Errorf("%w: longer than 254 bytes", ErrInvalidEmail)
	}
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Name != "" || addr.Address != s {
		return "", fmt.Errorf("%w: %q is not of the form local@domain", ErrInvalidEmail, s)
	}
	at := strings.LastIndexByte(s, '@')
	local, domain := s[:at], s[at+1:]
	if at < 1 || !strings.Contains(domain, ".") && domain != "localhost" {
		return "", fmt.Errorf("%w: %q has no domain", ErrInvalidEmail, s)
	}
	// One mailbox, one spelling: the domain in its ASCII (punycode) form,
	// lower case; the local part in Unicode normal form C. Otherwise
	// idn@exämple.com and idn@xn--exmple-cua.com would be two users.
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("%w: domain %q: %w", ErrInvalidEmail, domain, err)
	}
	local = norm.NFC.String(local)
	if len(local) > 64 {
		// RFC 5321's limit: mail servers refuse longer local parts.
		return "", fmt.Errorf("%w: the part before @ is longer than 64 bytes", ErrInvalidEmail)
	}
	out := local + "@" + strings.ToLower(ascii)
	if len(out) > 254 {
		return "", fmt.Errorf("%w: longer than 254 bytes", ErrInvalidEmail)
	}
	return out, nil
}

// ValidateName checks a display name.
func ValidateName(name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidName)
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: control characters are not allowed", ErrInvalidName)
	}
	if n := utf8.RuneCountInString(name); n > NameMaxLength {
		return fmt.Errorf("%w: %d characters, at most %d", ErrInvalidName, n, NameMaxLength)
	}
	return nil
}

// FindOrCreate returns the user with email (compared case-insensitively),
// creating it in tx when there is none. The unique index on lower(email)
// (under the ICU root collation, so that every script is lowered) decides between concurrent signups: both commit, one creates.
func FindOrCreate(ctx context.Context, tx pgx.Tx, email, name string) (*User, bool, error) {
	var u User
	err := tx.QueryRow(ctx, `
		INSERT INTO users (email, name) VALUES ($1, $2)
		ON CONFLICT ((lower(email COLLATE "und-x-icu"))) DO NOTHING
		RETURNING id, email, name, created_at`, email, name).Scan(&u.ID, &u.Email, &u.Name, &u.CreatedAt)
	if err == nil {
		return &u, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, false, fmt.Errorf("inserting user: %w", err)
	}
	err = tx.QueryRow(ctx, `SELECT id, email, name, created_at FROM users WHERE lower(email COLLATE "und-x-icu") = lower($1 COLLATE "und-x-icu")`, email).
		Scan(&u.ID, &u.Email, &u.Name, &u.CreatedAt)
	if err != nil {
		return nil, false, fmt.Errorf("reading existing user: %w", err)
	}
	return &u, false, nil
}

// Get returns the user with id.
func Get(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id int64) (*User, error) {
	var u User
	err := q.QueryRow(ctx, `SELECT id, email, name, created_at FROM users WHERE id = $1`, id).
		Scan(&u.ID, &u.Email, &u.Name, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrUserNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading user: %w", err)
	}
	return &u, nil
}

// Result is what Signup did.
type Result struct {
	User         *User
	Created      bool                  // the user is new
	WelcomeEmail *runner.EnqueueResult // the welcome email's job, new or existing
}

// Signup finds or creates the user and enqueues their welcome email, both in
// the caller's transaction. email must have passed NormalizeEmail.
func Signup(ctx context.Context, tx pgx.Tx, r *runner.Runner, email, name, messageDomain string) (*Result, error) {
	u, created, err := FindOrCreate(ctx, tx, email, name)
	if err != nil {
		return nil, err
	}
	job, err := jobs.EnqueueWelcomeEmail(ctx, r, tx, u.ID, EmailTypeWelcome, messageDomain)
	if err != nil {
		return nil, err
	}
	return &Result{User: u, Created: created, WelcomeEmail: job}, nil
}
