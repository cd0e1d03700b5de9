package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// CheckTypes compares decoded TOML data (as toml.Decode gives it into a
// map[string]any) with the struct type it will be decoded into, reports every
// value of the wrong type under its key with what to write instead, and
// deletes those values from data, so that what is left decodes and the other
// problems of the file can be found too. The decoder itself stops at the
// first such value and says it in a string. Keys the struct lacks are left to
// the decoder's list of undecoded keys.
func CheckTypes(data map[string]any, into reflect.Type, p *Problems) {
	checkStruct(data, into, p)
}

func checkStruct(data map[string]any, t reflect.Type, p *Problems) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		v, ok := data[name]
		if !ok {
			continue
		}
		if !checkValue(v, f.Type, name, p) {
			delete(data, name)
		}
	}
}

// checkValue reports whether v can be decoded into t. A table (or array of
// tables) keeps its good members, its bad ones deleted, and counts as good.
func checkValue(v any, t reflect.Type, key string, p *Problems) bool {
	n := p.Len()
	checkValueInto(v, t, key, p)
	switch v.(type) {
	case map[string]any:
		if t.Kind() == reflect.Struct {
			return true
		}
	case []map[string]any:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct {
			return true
		}
	}
	return p.Len() == n
}

func checkValueInto(v any, t reflect.Type, key string, p *Problems) {
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		s, ok := v.(string)
		if !ok {
			p.Add(key, "%s: want a string, e.g. %s", show(v), example(t))
			return
		}
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			p.AddErr(key, err)
		}
		return
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := v.(string); !ok {
			p.Add(key, "%s: want a string (in quotes)", show(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			p.Add(key, "%s: want true or false", show(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if _, ok := v.(int64); !ok {
			p.Add(key, "%s: want a whole number, without quotes", show(v))
		}
	case reflect.Float32, reflect.Float64:
		switch v.(type) {
		case int64, float64:
		default:
			p.Add(key, "%s: want a number, without quotes", show(v))
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			if tables, ok := v.([]map[string]any); ok {
				for i, m := range tables {
					checkValue(m, t.Elem(), key+"["+strconv.Itoa(i)+"]", p)
				}
				return
			}
			p.Add(key, "%s: want a list, e.g. [%s]", show(v), exampleElem(t.Elem()))
			return
		}
		for i, e := range list {
			checkValue(e, t.Elem(), key+"["+strconv.Itoa(i)+"]", p)
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			p.Add(key, "%s: want a table", show(v))
			return
		}
		checkStruct(m, t, p.At(key))
	}
}

func show(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case []any:
		return "a list"
	case map[string]any, []map[string]any:
		return "a table"
	}
	return fmt.Sprint(v)
}

func example(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return `"500ms" or "30s"`
	}
	return `"…"`
}

func exampleElem(t reflect.Type) string {
	if t.Kind() == reflect.String {
		return `"…"`
	}
	return "…"
}
