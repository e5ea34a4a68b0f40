package datasync

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// HTTPTimeoutDefault bounds each page request of an HTTPSource.
const HTTPTimeoutDefault = 30 * time.Second

// MaxFeedPageBytes caps a feed page.
const MaxFeedPageBytes = 32 << 20

// FeedPage is the JSON body of a feed page:
//
//	GET <feed>?cursor=<cursor>&limit=<n>
//	{"changes": [{"id": "42", "version": 3, "data": {...}}, ...], "next_cursor": "...", "has_more": true, "as_of": "2026-12-03T10:00:00Z"}
type FeedPage struct {
	Changes    []Change   `json:"changes"`
	NextCursor *string    `json:"next_cursor"`
	HasMore    bool       `json:"has_more"`
	AsOf       *time.Time `json:"as_of,omitempty"`
}

// HTTPSource reads a JSON feed with paging (FeedPage). The feed is trusted
// with the order and completeness of its changes; the runner checks each
// page's shape, refuses a whole page on any bad change (ErrBadData), and
// never lets an older version replace a newer one, so a feed that delivers
// out of order cannot roll data back.
type HTTPSource struct {
	url    *url.URL
	client *http.Client
	token  string
}

// HTTPSourceOpts configure an HTTPSource. The zero value is fine.
type HTTPSourceOpts struct {
	// Timeout bounds each page request. Defaults to HTTPTimeoutDefault.
	Timeout time.Duration
	// Token is sent as a bearer token when set.
	Token string
}

// NewHTTPSource reads the feed at feedURL.
func NewHTTPSource(feedURL string, opts *HTTPSourceOpts) (*HTTPSource, error) {
	u, err := url.Parse(feedURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("datasync: feed URL %q: want http(s)://host/path", feedURL)
	}
	if opts == nil {
		opts = &HTTPSourceOpts{}
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = HTTPTimeoutDefault
	}
	return &HTTPSource{url: u, client: &http.Client{Timeout: timeout}, token: opts.Token}, nil
}

// Changes implements Source.
func (s *HTTPSource) Changes(ctx context.Context, cursor string, limit int) (*Page, error) {
	u := *s.url
	q := u.Query()
	q.Set("cursor", cursor)
	q.Set("limit", strconv.Itoa(limit))
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("datasync: fetching the feed: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxFeedPageBytes+1))
	if err != nil {
		return nil, fmt.Errorf("datasync: reading the feed: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("datasync: the feed answered HTTP %d: %s", resp.StatusCode, truncate(body))
	}
	if len(body) > MaxFeedPageBytes {
		return nil, fmt.Errorf("%w: a page over %d bytes", ErrBadData, MaxFeedPageBytes)
	}
	var fp FeedPage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fp); err != nil {
		return nil, fmt.Errorf("%w: the feed page is not valid JSON of the expected shape: %w", ErrBadData, err)
	}
	if fp.NextCursor == nil {
		return nil, fmt.Errorf("%w: the feed page has no next_cursor", ErrBadData)
	}
	if len(fp.Changes) > limit {
		return nil, fmt.Errorf("%w: the feed returned %d changes for a limit of %d", ErrBadData, len(fp.Changes), limit)
	}
	page := &Page{Changes: fp.Changes, Next: *fp.NextCursor, More: fp.HasMore}
	if fp.AsOf != nil && !fp.HasMore {
		page.AsOf = *fp.AsOf
	}
	if err := page.Validate(); err != nil {
		return nil, err
	}
	return page, nil
}

// FeedHandler serves src as a feed that HTTPSource reads: GET with cursor
// and limit (1 to 10,000) query parameters. A feed of a PostgresSource
// carries its visibility guarantees over HTTP.
func FeedHandler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || limit < 1 || limit > 10_000 {
			http.Error(w, "limit must be an integer from 1 to 10000", http.StatusBadRequest)
			return
		}
		page, err := src.Changes(r.Context(), r.URL.Query().Get("cursor"), limit)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fp := FeedPage{Changes: page.Changes, NextCursor: &page.Next, HasMore: page.More}
		if fp.Changes == nil {
			fp.Changes = []Change{}
		}
		if !page.AsOf.IsZero() {
			fp.AsOf = &page.AsOf
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(fp)
	})
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
