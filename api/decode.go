package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/problem"
)

// decodeJSON reads r's body into dst, answering the client's mistakes with a
// problem and false: 415 for a content type other than JSON, 413 for a body
// over the limit, 400 for malformed JSON, unknown fields or trailing data.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, dst any) bool {
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/json" {
		problem.Write(w, r, problem.New(http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type",
			"Send the request body as application/json."))
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			problem.Write(w, r, problem.New(http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large",
				fmt.Sprintf("The body must be at most %d bytes.", s.cfg.MaxBodyBytes)))
			return false
		}
		problem.Write(w, r, problem.New(http.StatusBadRequest, "unreadable-body", "Unreadable request body", err.Error()))
		return false
	}
	if !utf8.Valid(body) {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body", "The body is not valid UTF-8."))
		return false
	}
	if trimmed := bytes.TrimSpace(body); len(trimmed) == 0 || trimmed[0] != '{' {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body", "The body must be a JSON object."))
		return false
	}
	// The same checks as an Idempotency-Key request's fingerprint: a member
	// named twice ("email" twice, or "email" and "Email", which Go's decoder
	// would both take) is refused, not silently resolved. Behind the
	// idempotency layer (its transaction in the context) the fingerprint
	// has checked this body already.
	if err := checkMembers(r, body); err != nil {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body",
			idempotency.InvalidBodyDetail(err)))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body", jsonErrorDetail(err)))
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body",
			"The body must hold exactly one JSON value."))
		return false
	}
	return true
}

// jsonErrorDetail says what is wrong with a body in the client's terms,
// without Go type names.
func jsonErrorDetail(err error) string {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("Malformed JSON at byte %d.", syntax.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "Malformed JSON: the body ends too early."
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return fmt.Sprintf("Field %q must be a %s, not a JSON %s.", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &typeErr):
		return fmt.Sprintf("The body must be a JSON object, not a JSON %s.", typeErr.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "Unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "."
	}
	return "Malformed JSON."
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "number"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	}
	return "object"
}

// checkMembers refuses a JSON body that names a member twice, unless the
// idempotency layer checked it already (its transaction is in the context).
func checkMembers(r *http.Request, body []byte) error {
	if idempotency.Tx(r.Context()) != nil {
		return nil
	}
	_, err := idempotency.CanonicalJSON(body)
	return err
}
