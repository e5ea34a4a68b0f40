package datasync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Change is one record as the source holds it now.
type Change struct {
	// ID identifies the record within its source. Required.
	ID string `json:"id"`
	// Version increases with every change of the record. Required, >= 1.
	Version int64 `json:"version"`
	// Data is the record, a JSON value.
	Data json.RawMessage `json:"data"`
}

// Page is what a source returns for one read.
type Page struct {
	Changes []Change
	// Next is the cursor after these changes.
	Next string
	// More is true when the sync in progress has more changes after Next.
	More bool
	// AsOf, on the last page of a sync, is the source time up to which every
	// committed change has now been read (zero when the source cannot tell).
	AsOf time.Time
}

// Source returns the changes of a data source after a cursor, in pages, in
// a total order that the cursor remembers. "" is the beginning. A sync reads
// pages until More is false; what was committed at the source while it read
// is returned by a later sync, never skipped.
type Source interface {
	Changes(ctx context.Context, cursor string, limit int) (*Page, error)
}

// ErrBadData marks a page the source returned but that cannot be applied:
// a change without an id, a version below 1, data that is not JSON. Nothing
// of the page is written.
var ErrBadData = errors.New("datasync: bad source data")

var sourceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidName reports whether name can name a source (sync_cursors.source).
func ValidName(name string) bool { return sourceName.MatchString(name) }

// Validate checks every change of p; one bad change refuses the page.
func (p *Page) Validate() error {
	for i, c := range p.Changes {
		switch {
		case c.ID == "":
			return fmt.Errorf("%w: change %d has no id", ErrBadData, i)
		case len(c.ID) > 1024:
			return fmt.Errorf("%w: change %d has an id of %d bytes", ErrBadData, i, len(c.ID))
		case c.Version < 1:
			return fmt.Errorf("%w: change %q has version %d, want >= 1", ErrBadData, c.ID, c.Version)
		case len(c.Data) == 0 || !json.Valid(c.Data):
			return fmt.Errorf("%w: change %q has data that is not JSON", ErrBadData, c.ID)
		case strings.ContainsRune(c.ID, 0) || escapesNUL(c.Data):
			return fmt.Errorf("%w: change %q holds a NUL character, which PostgreSQL text and jsonb cannot store", ErrBadData, c.ID)
		}
	}
	return nil
}

// escapesNUL tells whether the JSON text data holds the escape \u0000 (a NUL
// character in a string), telling it from an escaped backslash followed by
// "u0000" (`\\u0000`, six ordinary characters).
func escapesNUL(data []byte) bool {
	for i := 0; i < len(data); i++ {
		if data[i] != '\\' {
			continue
		}
		i++ // the escaped character: a backslash escapes only it
		if i < len(data) && data[i] == 'u' && bytes.HasPrefix(data[i:], []byte("u0000")) {
			return true
		}
	}
	return false
}
