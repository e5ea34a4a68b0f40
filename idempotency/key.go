package idempotency

import (
	"errors"
	"fmt"
	"strings"
)

// HeaderName is the request header that carries the key.
const HeaderName = "Idempotency-Key"

// MaxKeyLength is the longest accepted key, in characters.
const MaxKeyLength = 255

var (
	// ErrKeyMissing: no Idempotency-Key header, or an empty one.
	ErrKeyMissing = errors.New("idempotency: Idempotency-Key header missing or empty")
	// ErrKeyInvalid: a key that is too long, not printable ASCII, given
	// twice, or a malformed quoted string.
	ErrKeyInvalid = errors.New("idempotency: invalid Idempotency-Key")
)

// ParseKey returns the key carried by the Idempotency-Key header values.
//
// Both forms are accepted and mean the same key: the draft's Structured Field
// string, `"8e03978e-40d5"` (with `\"` and `\\` as its only escapes), and a
// bare token, `8e03978e-40d5`. A key is 1 to 255 characters of printable ASCII
// (0x20 to 0x7E); a bare key may not contain a double quote or start or end
// with a space.
func ParseKey(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", ErrKeyMissing
	case 1:
	default:
		return "", fmt.Errorf("%w: the header is given %d times", ErrKeyInvalid, len(values))
	}
	v := strings.Trim(values[0], " \t")
	if v == "" {
		return "", ErrKeyMissing
	}
	var key string
	if v[0] == '"' {
		var err error
		if key, err = parseSFString(v); err != nil {
			return "", err
		}
	} else {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c > 0x7e || c == '"' {
				return "", fmt.Errorf("%w: byte %d (0x%02x) is not printable ASCII or is a quote", ErrKeyInvalid, i, c)
			}
		}
		key = v
	}
	switch {
	case key == "":
		return "", ErrKeyMissing
	case len(key) > MaxKeyLength:
		return "", fmt.Errorf("%w: %d characters, at most %d", ErrKeyInvalid, len(key), MaxKeyLength)
	}
	return key, nil
}

// parseSFString parses an RFC 8941 sf-string: DQUOTE *(unescaped / "\" ( DQUOTE / "\" )) DQUOTE.
func parseSFString(v string) (string, error) {
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			if i+1 >= len(v) || (v[i+1] != '"' && v[i+1] != '\\') {
				return "", fmt.Errorf("%w: a backslash in a quoted key may only escape \" or \\", ErrKeyInvalid)
			}
			i++
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", fmt.Errorf("%w: characters after the closing quote", ErrKeyInvalid)
			}
			return b.String(), nil
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: byte %d (0x%02x) is not printable ASCII", ErrKeyInvalid, i, c)
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("%w: unterminated quoted string", ErrKeyInvalid)
}
