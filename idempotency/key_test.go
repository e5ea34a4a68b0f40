package idempotency_test

import (
	"bytes"
	"encoding/json"
	"math/big"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/idempotency"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   []string
		want string
	}{
		{[]string{"abc"}, "abc"},
		{[]string{`"abc"`}, "abc"},
		{[]string{"  8e03978e-40d5-43e8-bc93-6894a57f9324 "}, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{[]string{`"with \"quotes\" and \\ backslash"`}, `with "quotes" and \ backslash`},
		{[]string{`"has space"`}, "has space"},
		{[]string{"inner space"}, "inner space"},
		{[]string{strings.Repeat("k", 255)}, strings.Repeat("k", 255)},
		{[]string{`"` + strings.Repeat("k", 255) + `"`}, strings.Repeat("k", 255)},
	} {
		got, err := idempotency.ParseKey(tt.in)
		require.NoError(t, err, "%q", tt.in)
		require.Equal(t, tt.want, got)
	}
	for _, in := range [][]string{nil, {""}, {"   "}, {`""`}} {
		_, err := idempotency.ParseKey(in)
		require.ErrorIs(t, err, idempotency.ErrKeyMissing, "%q", in)
	}
	for _, in := range [][]string{
		{strings.Repeat("k", 256)},
		{`"` + strings.Repeat("k", 256) + `"`},
		{"café"},
		{"tab\there"},
		{"nul\x00"},
		{"a", "b"},
		{`"unterminated`},
		{`"bad \n escape"`},
		{`"trailing" x`},
		{`bare"quote`},
		{`"` + "\x7f" + `"`},
	} {
		_, err := idempotency.ParseKey(in)
		require.ErrorIs(t, err, idempotency.ErrKeyInvalid, "%q", in)
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"abc", `"abc"`, `"a\"b"`, `"a\\b"`, "", `"`, `\`, "k k", strings.Repeat("x", 256), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := idempotency.ParseKey([]string{s})
		if err != nil {
			return
		}
		if len(key) == 0 || len(key) > idempotency.MaxKeyLength {
			t.Fatalf("accepted key of length %d", len(key))
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("accepted byte 0x%02x", key[i])
			}
		}
		// The quoted form of the key is the same key.
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		again, err := idempotency.ParseKey([]string{quoted})
		if err != nil || again != key {
			t.Fatalf("quoted form %q of %q parsed as %q, %v", quoted, key, again, err)
		}
	})
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	same := [][]string{
		{`{"a":1,"b":[1,2,{"c":null}]}`, ` { "b" : [ 1 , 2 , { "c" : null } ] , "a" : 1 } `},
		{`{"amount":1.50}`, `{"amount":1.5}`, `{"amount":15e-1}`, `{"amount":0.015E2}`},
		{`{"n":100}`, `{"n":1e2}`, `{"n":1.00e+2}`},
		{`{"n":0}`, `{"n":-0}`, `{"n":0.000}`},
		{`"\u00e9"`, `"é"`},
		{`"<tag>"`, `"\u003ctag\u003e"`},
	}
	for _, group := range same {
		first, err := idempotency.CanonicalJSON([]byte(group[0]))
		require.NoError(t, err, group[0])
		for _, other := range group[1:] {
			c, err := idempotency.CanonicalJSON([]byte(other))
			require.NoError(t, err, other)
			require.Equal(t, string(first), string(c), "%s vs %s", group[0], other)
		}
	}
	different := [][2]string{
		{`{"amount":1999}`, `{"amount":2000}`},
		{`{"amount":1999}`, `{"amount":"1999"}`},
		{`{"a":[1,2]}`, `{"a":[2,1]}`},
		{`{"a":null}`, `{}`},
		{`{"a":true}`, `{"a":1}`},
		{`{"n":1e-5}`, `{"n":1e-6}`},
		{`{"n":12345678901234567890}`, `{"n":12345678901234567891}`},
	}
	for _, pair := range different {
		a, err := idempotency.CanonicalJSON([]byte(pair[0]))
		require.NoError(t, err)
		b, err := idempotency.CanonicalJSON([]byte(pair[1]))
		require.NoError(t, err)
		require.NotEqual(t, string(a), string(b), "%s vs %s", pair[0], pair[1])
	}
	for _, bad := range []string{`{"a":1`, `{"a":1}{}`, `{"a":1,"a":2}`, `{"amount":1,"AMOUNT":2}`, "\"\xff\"",
		`{"n":1e1001}`, `[` + strings.Repeat("[", 70) + strings.Repeat("]", 71), `nope`} {
		_, err := idempotency.CanonicalJSON([]byte(bad))
		require.ErrorIs(t, err, idempotency.ErrBodyInvalid, bad)
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	u := func(s string) *url.URL {
		parsed, err := url.Parse(s)
		require.NoError(t, err)
		return parsed
	}
	fp := func(method, path, ct, body string) [32]byte {
		f, err := idempotency.Fingerprint(method, u(path), ct, []byte(body))
		require.NoError(t, err)
		return f
	}
	base := fp("POST", "/api/payments", "application/json", `{"a":1,"b":2}`)
	require.Equal(t, base, fp("POST", "/api/payments", "application/json; charset=utf-8", `{"b":2, "a":1}`))
	require.NotEqual(t, base, fp("PUT", "/api/payments", "application/json", `{"a":1,"b":2}`))
	require.NotEqual(t, base, fp("POST", "/api/other", "application/json", `{"a":1,"b":2}`))
	require.NotEqual(t, base, fp("POST", "/api/payments", "application/json", `{"a":1,"b":3}`))
	require.NotEqual(t, base, fp("POST", "/api/payments?x=1", "application/json", `{"a":1,"b":2}`))
	require.Equal(t, fp("POST", "/p?x=1&y=2", "", ""), fp("POST", "/p?y=2&x=1", "", ""))
	require.NotEqual(t, fp("POST", "/p", "text/plain", "a b"), fp("POST", "/p", "text/plain", "a  b"), "non-JSON bodies are compared as bytes")
	_, err := idempotency.Fingerprint("POST", u("/p"), "application/json", []byte(`{"a":`))
	require.ErrorIs(t, err, idempotency.ErrBodyInvalid)
}

// normalize decodes a JSON text into values where numbers are exact
// rationals, so two texts holding the same values compare equal.
func normalize(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case json.Number:
			r, ok := new(big.Rat).SetString(string(x))
			if !ok {
				t.Fatalf("number %q", x)
			}
			return r.RatString()
		case map[string]any:
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	return walk(v)
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":[true,null,"x"]}`, `{"amount":1.50,"currency":"EUR"}`, `[1e2,-0.0,3]`, `"\u00e9\n"`,
		`{"a":{"b":{"c":[]}}}`, `12`, `{"a":1,"A":2}`, `{`, `{"n":1e999}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := idempotency.CanonicalJSON(body)
		if err != nil {
			return
		}
		// The canonical form is JSON, canonical itself, and holds the same
		// values as the input.
		again, err := idempotency.CanonicalJSON(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("canonical form %q is not stable: %q, %v", c, again, err)
		}
		if !reflect.DeepEqual(normalize(t, body), normalize(t, c)) {
			t.Fatalf("canonical form %q changed the values of %q", c, body)
		}
	})
}
