// Package idempotency is net/http middleware that honours the Idempotency-Key
// request header (IETF httpapi draft semantics, Stripe-like behaviour), with
// PostgreSQL deciding every race:
//
//   - The key is required (unless Config.Optional): missing or empty, 400;
//     longer than 255 characters, not printable ASCII, or a malformed quoted
//     string, 400. Both `"abc"` (the draft's sf-string) and `abc` are accepted
//     and are the same key.
//   - Keys are scoped by the authenticated client (Config.Principal): a client
//     never receives another client's stored response, whatever key it sends.
//   - The request fingerprint covers the method, the path, the query and the
//     body in canonical form (JSON key order and whitespace do not matter;
//     values do). The same key with another fingerprint: 422.
//   - The same key while its first request is in flight: 409 with Retry-After.
//     The first request holds a transaction-scoped advisory lock on the key.
//   - The same key after completion: the stored status, headers and body, byte
//     for byte, with "Idempotent-Replayed: true".
//   - The handler writes through Tx(ctx): reserving the key, the handler's
//     writes (a payment, its job) and the stored response commit in one
//     transaction, so a crash leaves either nothing (the retry runs afresh) or
//     everything (the retry replays). Responses of 400 and above roll the
//     transaction back and are never stored.
//   - Stored responses expire after Config.Lifetime (24 h); PeriodicPurge
//     deletes them. A retry after expiry runs the handler again, which must
//     find what the first request did (package payment keeps every payment
//     under its key, so it never charges twice).
//   - Every error is application/problem+json.
//
// Use it around your own handlers:
//
//	layer, _ := idempotency.New(&idempotency.Config{DB: pool, Principal: clientOf})
//	mux.Handle("POST /orders", layer.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//		tx := idempotency.Tx(r.Context())
//		// write through tx; answer; the layer commits and stores the answer
//	})))
package idempotency
