package idempotency_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/testdb"
)

// Put the layer in front of your own handler: it writes through the request's
// transaction, and the layer commits the writes together with the stored
// answer. A retry with the same key gets that answer back; the same key with
// another body is refused.
func ExampleLayer_Middleware() {
	ctx := context.Background()
	db, drop := testdb.ForExample() // in your app: a *pgxpool.Pool on a database migrated with package schema
	defer drop()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE orders (id bigserial PRIMARY KEY, client text NOT NULL, item text NOT NULL)`); err != nil {
		panic(err)
	}

	layer, err := idempotency.New(&idempotency.Config{
		DB: db.Pool,
		// Keys belong to the authenticated client; here, a header stands in
		// for your authentication.
		Principal: func(r *http.Request) (string, error) { return r.Header.Get("X-Client"), nil },
	})
	if err != nil {
		panic(err)
	}
	createOrder := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Item string `json:"item"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Item == "" {
			http.Error(w, "an item is required", http.StatusBadRequest)
			return
		}
		var id int64
		err := idempotency.Tx(r.Context()).QueryRow(r.Context(),
			`INSERT INTO orders (client, item) VALUES ($1, $2) RETURNING id`, r.Header.Get("X-Client"), in.Item).Scan(&id)
		if err != nil {
			http.Error(w, "database error", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"order_id":%d}`, id)
	})
	srv := httptest.NewServer(layer.Middleware(createOrder))
	defer srv.Close()

	post := func(key, body string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Client", "shop")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 400 {
			var p struct {
				Title string `json:"title"`
			}
			_ = json.Unmarshal(b, &p)
			fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"), p.Title)
			return
		}
		fmt.Println(resp.StatusCode, string(b), "replayed:", resp.Header.Get(idempotency.ReplayedHeader) == "true")
	}
	post("order-7f3a", `{"item": "book"}`)
	post("order-7f3a", `{ "item":"book" }`) // a retry: same JSON, other whitespace
	post("order-7f3a", `{"item": "lamp"}`)  // the key reused for another order

	var orders int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&orders); err != nil {
		panic(err)
	}
	fmt.Println("orders:", orders)
	// Output:
	// 201 {"order_id":1} replayed: false
	// 201 {"order_id":1} replayed: true
	// 422 application/problem+json Idempotency-Key reused
	// orders: 1
}
