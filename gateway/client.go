package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ClientTimeoutDefault bounds each charge request.
const ClientTimeoutDefault = 10 * time.Second

// ClientOpts configure a Client. The zero value is fine.
type ClientOpts struct {
	// Timeout bounds each request. Defaults to ClientTimeoutDefault.
	Timeout time.Duration
	// Token is sent as "Authorization: Bearer <Token>" when set.
	Token string
	// Transport defaults to http.DefaultTransport.
	Transport http.RoundTripper
}

// Client calls a gateway over HTTP (the reference Server's protocol).
type Client struct {
	base  string
	http  *http.Client
	token string
}

// NewClient returns a client of the gateway at baseURL.
func NewClient(baseURL string, opts *ClientOpts) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gateway: base URL %q: want http(s)://host[:port]", baseURL)
	}
	if opts == nil {
		opts = &ClientOpts{}
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = ClientTimeoutDefault
	}
	return &Client{
		base:  strings.TrimRight(baseURL, "/"),
		http:  &http.Client{Timeout: timeout, Transport: opts.Transport},
		token: opts.Token,
	}, nil
}

type errorBody struct {
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
		Charge  string `json:"charge"`
	} `json:"error"`
}

// Charge implements Gateway.
func (c *Client) Charge(ctx context.Context, req *ChargeRequest) (*Charge, error) {
	if req.IdempotencyKey == "" {
		return nil, fmt.Errorf("%w: no idempotency key", ErrInvalidRequest)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/charges", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	httpReq.Header.Set("Content-Type", "application/json")
	httpReq.Header.Set("Idempotency-Key", req.IdempotencyKey)
	if c.token != "" {
		httpReq.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(httpReq)
	if err != nil {
		// The request may have reached the gateway and charged.
		return nil, &TransientError{InDoubt: true, Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, &TransientError{Status: resp.StatusCode, InDoubt: true, Err: err}
	}

	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated:
		var ch Charge
		if err := json.Unmarshal(raw, &ch); err != nil || ch.ID == "" {
			return nil, &TransientError{Status: resp.StatusCode, InDoubt: true, Err: fmt.Errorf("unreadable charge: %s", truncate(raw))}
		}
		return &ch, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		retry := time.Second
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			retry = time.Duration(s) * time.Second
		}
		return nil, &RateLimitedError{RetryAfter: retry}
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusConflict:
		return nil, &TransientError{Status: resp.StatusCode, Err: errors.New(truncate(raw))}
	}

	var eb errorBody
	_ = json.Unmarshal(raw, &eb)
	switch {
	case resp.StatusCode == http.StatusPaymentRequired:
		return nil, &DeclinedError{Code: eb.Error.Code, Message: eb.Error.Message, ChargeID: eb.Error.Charge}
	case eb.Error.Code == "idempotency_key_reused":
		return nil, fmt.Errorf("%w: %s", ErrKeyReused, eb.Error.Message)
	default:
		return nil, fmt.Errorf("%w: HTTP %d: %s", ErrInvalidRequest, resp.StatusCode, truncate(raw))
	}
}

func truncate(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
