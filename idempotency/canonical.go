package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrBodyInvalid: a JSON body that cannot be canonicalised (malformed,
// invalid UTF-8, duplicate keys, nested too deep, a number out of range).
var ErrBodyInvalid = errors.New("idempotency: invalid JSON body")

// InvalidBodyDetail says what is wrong with a body that CanonicalJSON
// refused, in the client's terms (a problem's detail).
func InvalidBodyDetail(err error) string {
	return "The body is not valid JSON" + strings.TrimPrefix(err.Error(), ErrBodyInvalid.Error()) + "."
}

// Limits of CanonicalJSON.
const (
	MaxDepth    = 64
	MaxExponent = 1000
)

// CanonicalJSON returns a canonical form of a JSON text: object members
// sorted by name, no insignificant whitespace, strings re-escaped one way,
// numbers written as <digits>e<exponent> with no leading or trailing zeros
// (so 1.50, 1.5 and 15e-1 are the same number; a number whose exponent in
// that form is beyond ±MaxExponent is refused). Two texts have the same
// canonical form exactly when they hold the same values.
//
// Objects with two members whose names are equal ignoring case are refused:
// Go's decoder matches struct fields case-insensitively and keeps the last
// one, so reordering such members would change the meaning without changing
// a sorted form.
func CanonicalJSON(body []byte) ([]byte, error) {
	if !utf8.Valid(body) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrBodyInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var out bytes.Buffer
	if err := canonicalValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the first value", ErrBodyInvalid)
	}
	return out.Bytes(), nil
}

func canonicalValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: nested deeper than %d", ErrBodyInvalid, MaxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBodyInvalid, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return canonicalObject(dec, out, depth)
		case '[':
			out.WriteByte('[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out.WriteByte(',')
				}
				if err := canonicalValue(dec, out, depth+1); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil { // ']'
				return fmt.Errorf("%w: %w", ErrBodyInvalid, err)
			}
			out.WriteByte(']')
			return nil
		}
		return fmt.Errorf("%w: unexpected %v", ErrBodyInvalid, t)
	case string:
		writeString(out, t)
	case json.Number:
		n, err := canonicalNumber(string(t))
		if err != nil {
			return err
		}
		out.WriteString(n)
	case bool:
		out.WriteString(strconv.FormatBool(t))
	case nil:
		out.WriteString("null")
	}
	return nil
}

func canonicalObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	type member struct {
		name  string
		value []byte
	}
	var members []member
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBodyInvalid, err)
		}
		name, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: object member name expected", ErrBodyInvalid)
		}
		folded := foldName(name)
		if seen[folded] {
			return fmt.Errorf("%w: member %q appears twice (names are compared ignoring case)", ErrBodyInvalid, name)
		}
		seen[folded] = true
		var v bytes.Buffer
		if err := canonicalValue(dec, &v, depth+1); err != nil {
			return err
		}
		members = append(members, member{name, v.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // '}'
		return fmt.Errorf("%w: %w", ErrBodyInvalid, err)
	}
	sort.Slice(members, func(i, j int) bool { return members[i].name < members[j].name })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		writeString(out, m.name)
		out.WriteByte(':')
		out.Write(m.value)
	}
	out.WriteByte('}')
	return nil
}

// foldName maps every rune to the smallest rune of its simple case folding
// orbit, so names equal under strings.EqualFold map to the same string.
func foldName(s string) string {
	var b strings.Builder
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

func writeString(out *bytes.Buffer, s string) {
	b, _ := json.Marshal(s) // a valid UTF-8 string always marshals
	out.Write(b)
}

// canonicalNumber rewrites a JSON number literal as [-]<digits>e<exp>, with
// no leading or trailing zeros in digits; zero is "0".
func canonicalNumber(lit string) (string, error) {
	neg := strings.HasPrefix(lit, "-")
	s := strings.TrimPrefix(lit, "-")
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		// Bounded before normalising, so that Atoi cannot overflow and the
		// sum below cannot wrap.
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || e > 1<<20 || e < -(1<<20) {
			return "", fmt.Errorf("%w: number %s out of range", ErrBodyInvalid, truncateLit(lit))
		}
		exp = e
		s = s[:i]
	}
	if i := strings.IndexByte(s, '.'); i >= 0 {
		exp -= len(s) - i - 1
		s = s[:i] + s[i+1:]
	}
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "0", nil
	}
	trimmed := strings.TrimRight(s, "0")
	exp += len(s) - len(trimmed)
	// The range applies to the value, not to how it is written: 10e1000
	// is 1e1001.
	if exp > MaxExponent || exp < -MaxExponent {
		return "", fmt.Errorf("%w: number %s out of range (exponent beyond ±%d)", ErrBodyInvalid, truncateLit(lit), MaxExponent)
	}
	if neg {
		trimmed = "-" + trimmed
	}
	return trimmed + "e" + strconv.Itoa(exp), nil
}

func truncateLit(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// Fingerprint identifies a request for the purpose of an idempotency key:
// the method, the path, the query (parameters sorted) and the body, in
// canonical form when it is JSON. It returns ErrBodyInvalid for a JSON body
// that cannot be canonicalised.
func Fingerprint(method string, u *url.URL, contentType string, body []byte) ([32]byte, error) {
	mediaType, _, _ := mime.ParseMediaType(contentType)
	canon := body
	if len(bytes.TrimSpace(body)) > 0 && (mediaType == "application/json" || strings.HasSuffix(mediaType, "+json")) {
		var err error
		if canon, err = CanonicalJSON(body); err != nil {
			return [32]byte{}, err
		}
	}
	query := u.RawQuery
	if values, err := url.ParseQuery(u.RawQuery); err == nil {
		query = values.Encode()
	}
	h := sha256.New()
	for _, part := range []string{method, u.EscapedPath(), query, mediaType} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	h.Write(canon)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
