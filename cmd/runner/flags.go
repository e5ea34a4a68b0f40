package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// flags is a flag set whose every flag can also be set by an environment
// variable; a flag on the command line wins over the variable.
type flags struct {
	*flag.FlagSet
	errs  []error
	after []func() // run after parsing, to assemble values from several flags
}

func newFlags(name, usage string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nFlags (each also read from the environment variable in brackets):\n", usage)
		fs.PrintDefaults()
	}
	return &flags{FlagSet: fs}
}

func envUsage(env, usage string) string {
	if env == "" {
		return usage
	}
	return usage + " [" + env + "]"
}

func (f *flags) string(name, env, def, usage string) *string {
	if v, ok := os.LookupEnv(env); ok && env != "" {
		def = v
	}
	return f.String(name, def, envUsage(env, usage))
}

func (f *flags) int(name, env string, def int, usage string) *int {
	if v, ok := os.LookupEnv(env); ok && env != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not an integer", env, v))
		} else {
			def = n
		}
	}
	return f.Int(name, def, envUsage(env, usage))
}

func (f *flags) float(name, env string, def float64, usage string) *float64 {
	if v, ok := os.LookupEnv(env); ok && env != "" {
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not a number", env, v))
		} else {
			def = n
		}
	}
	return f.Float64(name, def, envUsage(env, usage))
}

func (f *flags) duration(name, env string, def time.Duration, usage string) *time.Duration {
	if v, ok := os.LookupEnv(env); ok && env != "" {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not a duration (e.g. 10s, 1m)", env, v))
		} else {
			def = d
		}
	}
	return f.Duration(name, def, envUsage(env, usage))
}

func (f *flags) bool(name, env string, def bool, usage string) *bool {
	if v, ok := os.LookupEnv(env); ok && env != "" {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not a boolean", env, v))
		} else {
			def = b
		}
	}
	return f.Bool(name, def, envUsage(env, usage))
}

// parse parses args and reports environment variables that did not parse.
func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if len(f.errs) > 0 {
		return fmt.Errorf("invalid environment: %v", f.errs)
	}
	for _, fn := range f.after {
		fn()
	}
	return nil
}

// parseTokens parses "principal:token,principal:token" into token ->
// principal.
func parseTokens(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		principal, token, ok := strings.Cut(pair, ":")
		if !ok || principal == "" || token == "" {
			return nil, fmt.Errorf("API tokens: %q is not principal:token", redactToken(pair))
		}
		if len(token) < 16 {
			return nil, fmt.Errorf("API tokens: the token of %q is shorter than 16 characters", principal)
		}
		if _, dup := out[token]; dup {
			return nil, fmt.Errorf("API tokens: a token is given twice")
		}
		out[token] = principal
	}
	return out, nil
}

func redactToken(pair string) string {
	if p, _, ok := strings.Cut(pair, ":"); ok {
		return p + ":***"
	}
	return "***"
}
