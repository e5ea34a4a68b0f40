package main

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/pgonce/pgonce/datasync"
)

// openedSources are the data sources of SYNC_SOURCES.
type openedSources struct {
	sources   map[string]datasync.Source
	intervals map[string]time.Duration
	closers   []func()
}

func (o *openedSources) names() []string {
	names := make([]string, 0, len(o.sources))
	for n := range o.sources {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (o *openedSources) Close() {
	for _, c := range o.closers {
		c()
	}
}

// openSources parses spec, "name=URL;name=URL", where URL is
//
//	postgres://...?sync_table=schema.table   a table of any PostgreSQL database (set up with TrackingSQL)
//	http(s)://...                             a JSON feed (datasync.FeedPage)
//
// and interval (0: none) asks for a periodic sync of every source.
func openSources(ctx context.Context, spec string, interval time.Duration) (*openedSources, error) {
	o := &openedSources{sources: map[string]datasync.Source{}, intervals: map[string]time.Duration{}}
	for _, entry := range strings.FieldsFunc(spec, func(r rune) bool { return r == ';' || r == '\n' }) {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, raw, ok := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !ok || !datasync.ValidName(name) {
			o.Close()
			return nil, fmt.Errorf("%w: SYNC_SOURCES entry %q: want name=URL with a name of lower-case letters, digits, _ and -", errUsage, redactURL(entry))
		}
		if _, dup := o.sources[name]; dup {
			o.Close()
			return nil, fmt.Errorf("%w: SYNC_SOURCES names %q twice", errUsage, name)
		}
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			o.Close()
			return nil, fmt.Errorf("%w: source %s: %w", errUsage, name, err)
		}
		switch u.Scheme {
		case "postgres", "postgresql":
			q := u.Query()
			table := q.Get("sync_table")
			if table == "" {
				table = name
			}
			q.Del("sync_table")
			u.RawQuery = q.Encode()
			src, err := datasync.OpenPostgresSource(ctx, u.String(), table)
			if err != nil {
				o.Close()
				return nil, fmt.Errorf("source %s: %w", name, err)
			}
			o.sources[name] = src
			o.closers = append(o.closers, src.Close)
		case "http", "https":
			src, err := datasync.NewHTTPSource(u.String(), nil)
			if err != nil {
				o.Close()
				return nil, fmt.Errorf("%w: source %s: %w", errUsage, name, err)
			}
			o.sources[name] = src
		default:
			o.Close()
			return nil, fmt.Errorf("%w: source %s: scheme %q: want postgres:// or http(s)://", errUsage, name, u.Scheme)
		}
		if interval > 0 {
			o.intervals[name] = interval
		}
	}
	return o, nil
}

func redactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		if at := strings.Index(s[i:], "@"); at >= 0 {
			return s[:i+3] + "***" + s[i+at:]
		}
	}
	return s
}
