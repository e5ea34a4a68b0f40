package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/olekukonko/tablewriter"

	"github.com/pgonce/pgonce/gateway"
)

// gatewayCommand runs the reference payment gateway on its own.
func gatewayCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gateway", "Usage: runner gateway [flags]\n\n"+
		"Runs the reference payment gateway (Stripe-like idempotency: a repeated Idempotency-Key returns the\n"+
		"original charge, a key reused with other parameters is refused with 422) until SIGINT or SIGTERM,\n"+
		"then prints its ledger summary. Fault rates can also be changed at runtime: PUT /v1/faults.")
	fs.SetOutput(stderr)
	listen := fs.string("listen", "GATEWAY_LISTEN_ADDR", "127.0.0.1:8090", "listen address")
	token := fs.string("token", "GATEWAY_TOKEN", "", "require this bearer token")
	faults := faultFlags(fs, gateway.Faults{})
	if err := fs.parse(args); err != nil {
		return err
	}
	srv := gateway.NewServer()
	srv.Token = *token
	srv.SetFaults(*faults)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- httpSrv.Serve(l) }()
	fmt.Fprintf(stdout, "reference gateway listening on http://%s (faults: %+v)\n", l.Addr(), *faults)

	select {
	case <-ctx.Done():
	case err := <-done:
		return err
	}
	srv.Close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(shutCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return printGatewayStats(stdout, srv.Stats())
}

func faultFlags(fs *flags, def gateway.Faults) *gateway.Faults {
	f := &gateway.Faults{}
	serverError := fs.float("server-error", "GATEWAY_SERVER_ERROR_RATE", def.ServerError, "share of new charges answered 503 without charging")
	timeoutAfterCharge := fs.float("timeout-after-charge", "GATEWAY_TIMEOUT_AFTER_CHARGE_RATE", def.TimeoutAfterCharge, "share of new charges made and never answered")
	decline := fs.float("decline", "GATEWAY_DECLINE_RATE", def.Decline, "share of new charges declined")
	rateLimit := fs.float("rate-limit", "GATEWAY_RATE_LIMIT_RATE", def.RateLimit, "share of new charges answered 429")
	latency := fs.duration("latency", "GATEWAY_LATENCY", def.Latency, "added to every charge")
	fs.after = append(fs.after, func() {
		*f = gateway.Faults{ServerError: *serverError, TimeoutAfterCharge: *timeoutAfterCharge, Decline: *decline,
			RateLimit: *rateLimit, Latency: *latency}
	})
	return f
}

func printGatewayStats(w io.Writer, st gateway.Stats) error {
	t := tablewriter.NewWriter(w)
	t.Header("gateway", "count")
	rows := [][2]string{
		{"charge requests", strconv.Itoa(st.Requests)},
		{"charges made", strconv.Itoa(st.Charges)},
		{"declines", strconv.Itoa(st.Declines)},
		{"replays of a key", strconv.Itoa(st.Replays)},
		{"409 key in flight", strconv.Itoa(st.InFlight409)},
		{"422 key reused", strconv.Itoa(st.KeyReused422)},
	}
	names := make([]string, 0, len(st.FaultsInjected))
	for k := range st.FaultsInjected {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		rows = append(rows, [2]string{"fault " + k, strconv.Itoa(st.FaultsInjected[k])})
	}
	for _, r := range rows {
		_ = t.Append(r[0], r[1])
	}
	return t.Render()
}
