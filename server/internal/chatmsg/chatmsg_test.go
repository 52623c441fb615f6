package chatmsg

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mtibben/confusables"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in                  string
		err                 error
		username, content   string
		hasName, hasContent bool
	}{
		{in: `{"username":"alice","content":"Hello!"}`, username: "alice", content: "Hello!", hasName: true, hasContent: true},
		{in: `{"content":"How is everyone?"}`, content: "How is everyone?", hasContent: true},
		{in: ` { "content" : "a\"b\\c\u00e9" } `, content: "a\"b\\cé", hasContent: true},
		{in: `{"username":null}`},
		{in: `{}`},
		{in: `null`, err: ErrNotObject},
		{in: `[]`, err: ErrNotObject},
		{in: `{"content":123}`, err: ErrWrongType},
		{in: `{"content":[[[[[[[[[[]]]]]]]]]]}`, err: ErrWrongType},
		{in: `{"extra":"x"}`, err: ErrUnknownField},
		{in: `{"content":"x"`, err: ErrBadJSON},
		{in: `{"content":"x"} trailing`, err: ErrBadJSON},
		{in: `not json`, err: ErrBadJSON},
	} {
		t.Run(tc.in, func(t *testing.T) {
			m, _, err := Parse([]byte(tc.in), nil)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if string(m.Username) != tc.username || string(m.Content) != tc.content || m.HasUsername != tc.hasName || m.HasContent != tc.hasContent {
				t.Fatalf("got %+v", m)
			}
		})
	}
}

func TestParseAllocatesNothingOnceScratchHasGrown(t *testing.T) {
	in := []byte(`{"username":"alice","content":"Hello, \u00e9veryone <3"}`)
	scratch := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { _, scratch, _ = Parse(in, scratch) }); n != 0 {
		t.Fatalf("%v allocations per message", n)
	}
}

func TestCheckUsername(t *testing.T) {
	for _, tc := range []struct {
		in   string
		err  error
		name string
	}{
		{in: "alice", name: "alice"},
		{in: "  bob  ", name: "bob"},
		{in: "José", name: "José"},
		{in: "", err: ErrUsernameRequired},
		{in: "   ", err: ErrUsernameRequired},
		{in: strings.Repeat("a", 33), err: ErrUsernameLength},
		{in: strings.Repeat("é", 32), name: strings.Repeat("é", 32)},
		{in: "a\nb", err: ErrUsernameChars},
		{in: "a\u0000b", err: ErrUsernameChars},
		{in: "a\u202eb", err: ErrUsernameChars},
		{in: "a\u200bb", err: ErrUsernameChars},
		{in: "\u3164", err: ErrUsernameChars},
		{in: "\xff", err: ErrUsernameChars},
		// System in every case, width and look-alike spelling (RELIABILITY
		// 22, 50): Unicode's confusables, not a hand-made list.
		{in: "System", err: ErrUsernameReserved},
		{in: "system", err: ErrUsernameReserved},
		{in: "SYSTEM", err: ErrUsernameReserved},
		{in: "ＳＹＳＴＥＭ", err: ErrUsernameReserved},
		{in: "Ѕуѕтем", err: ErrUsernameReserved},
		{in: "Ꮪystem", err: ErrUsernameReserved}, // Cherokee
		{in: "Տystem", err: ErrUsernameReserved}, // Armenian
		{in: "Systҽm", err: ErrUsernameReserved},
		{in: "Systẹm", err: ErrUsernameReserved},
		{in: "ЅУЅТЕМ", err: ErrUsernameReserved},
		{in: "Systern", err: ErrUsernameReserved},
		{in: "Systems", name: "Systems"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			name, err := CheckUsername([]byte(tc.in))
			if !errors.Is(err, tc.err) || name != tc.name {
				t.Fatalf("got (%q, %v), want (%q, %v)", name, err, tc.name, tc.err)
			}
		})
	}
}

func TestLookAlikeNamesShareOneKey(t *testing.T) {
	for _, pair := range [][2]string{
		{"alice", "Alice"},
		{"alice", "аlice"}, // Cyrillic а
		{"alice", "ＡＬＩＣＥ"},
		{"paypal", "pаypаl"},
		{"bob", "bоb"},
		{"noël", "noel"},
		{"rn", "m"},
	} {
		if a, b := NameKey(pair[0]), NameKey(pair[1]); a != b {
			t.Errorf("%q and %q have keys %q and %q", pair[0], pair[1], a, b)
		}
	}
	if NameKey("alice") == NameKey("alicia") {
		t.Error("different names share a key")
	}
}

// encodingJSON is the oracle: what encoding/json (HTML escaping on, as the
// original chat's WriteJSON) makes of the server message.
func encodingJSON(t testing.TB, username, content string) string {
	b, err := json.Marshal(struct {
		Username string `json:"username"`
		Content  string `json:"content"`
	}{username, content})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAppendChatMatchesEncodingJSON(t *testing.T) {
	for _, c := range []string{"Hello!", `<script>alert("x")</script>`, "a&b", "\u2028\u2029", "\x00\x1f\x7f", "é😀", "\xff\xfe", `\"`} {
		if got, want := string(AppendChat(nil, "alice", c)), encodingJSON(t, "alice", c); got != want {
			t.Errorf("%q: got %s, want %s", c, got, want)
		}
	}
}

// FuzzAppendChat checks the encoder byte for byte against encoding/json, as
// the README promises: any name and content, valid UTF-8 or not.
func FuzzAppendChat(f *testing.F) {
	for _, s := range []string{"Hello!", "<>&", "\u2028", "\x00", "\xff", "é😀", `"\`} {
		f.Add("alice", s)
	}
	f.Fuzz(func(t *testing.T, username, content string) {
		if got, want := string(AppendChat(nil, username, content)), encodingJSON(t, username, content); got != want {
			t.Fatalf("(%q, %q): got %s, want %s", username, content, got, want)
		}
	})
}

// FuzzParse: Parse never panics, and whatever it accepts encoding/json (the
// oracle) accepts too, with the same field values.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"username":"alice","content":"Hello!"}`,
		`{"content":"How is everyone?"}`,
		` { "username" : "a\"b\\c\/d\b\f\n\r\t" , "content" : "\u00e9\ud83d\ude00\ud800\udc00" } `,
		`{"username":"\ud800","content":"\udc00\ud800x"}`,
		`{"username":null,"content":null}`,
		`{"username":"a","username":"b"}`,
		`{"username":"a","username":null}`,
		`{"content":123}`, `{"content":[[[[[]]]]]}`, `{"extra":1}`, `{"Username":"a"}`,
		`{}`, `null`, `[]`, `"x"`, `{`, `{"content":"x"} x`, `{"content":"\u12"}`,
		"{\"content\":\"\x01\"}",
	} {
		f.Add([]byte(seed))
	}
	var scratch []byte
	f.Fuzz(func(t *testing.T, b []byte) {
		m, s, err := Parse(b, scratch)
		scratch = s
		if err != nil || !utf8.Valid(b) { // the frame layer rejects invalid UTF-8 first
			return
		}
		var want struct{ Username, Content *string }
		if jerr := json.Unmarshal(b, &want); jerr != nil {
			t.Fatalf("parser accepted %q, encoding/json refuses it: %v", b, jerr)
		}
		check := func(field string, has bool, got []byte, want *string) {
			if has != (want != nil) || (want != nil && string(got) != *want) {
				t.Fatalf("%q: %s = (%v, %q), encoding/json says %v", b, field, has, got, want)
			}
		}
		check("username", m.HasUsername, m.Username, want.Username)
		check("content", m.HasContent, m.Content, want.Content)
	})
}

func TestAppendChatV2KeepsTheSeedKeysAndAddsIDRoomTime(t *testing.T) {
	got := AppendChatV2(nil, "alice", "<hi>", 1732912345678901, "lobby", 1732912345678)
	want := `{"username":"alice","content":"\u003chi\u003e","id":1732912345678901,"room":"lobby","ts":1732912345678}`
	if string(got) != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	var m struct {
		Username, Content, Room string
		ID                      uint64
		TS                      int64
	}
	if err := json.Unmarshal(got, &m); err != nil || m.ID != 1732912345678901 || m.Room != "lobby" {
		t.Fatalf("%+v %v", m, err)
	}
	gap := AppendGap(nil, "lobby", 42)
	var g struct {
		Username, Content, Room string
		Gap                     bool
		Since                   uint64
	}
	if err := json.Unmarshal(gap, &g); err != nil || !g.Gap || g.Since != 42 || g.Username != SystemName {
		t.Fatalf("gap frame %s: %+v %v", gap, g, err)
	}
}

func TestValidRoom(t *testing.T) {
	for name, ok := range map[string]bool{
		"lobby": true, "a": true, "room-1_b.c": true, strings.Repeat("a", 64): true, "0day": true,
		"": false, strings.Repeat("a", 65): false, "Lobby": false, "..": false, ".": false, ".hidden": false,
		"a%2Fb": false, "a/b": false, "a b": false, "é": false, "-x": false,
	} {
		if ValidRoom([]byte(name)) != ok {
			t.Errorf("ValidRoom(%q) = %v", name, !ok)
		}
	}
}

// The ASCII tables give exactly what the Unicode path gives.
func TestNameKeyASCIIFastPath(t *testing.T) {
	check := func(s string) {
		if got, want := NameKey(s), nameKeySlow(s); got != want {
			t.Fatalf("NameKey(%q) = %q, the Unicode path says %q", s, got, want)
		}
		if got, want := skeleton(s), confusables.Skeleton(s); got != want {
			t.Fatalf("skeleton(%q) = %q, confusables says %q", s, got, want)
		}
	}
	for a := 32; a < 127; a++ {
		for b := 32; b < 127; b++ {
			check(string([]byte{byte(a), byte(b)}))
		}
	}
	for _, s := range []string{"alice", "ALICE", "Sy5tem", "rn", "l1I|", "System", "bob_the-builder.99", "  x  "} {
		check(s)
	}
}

func TestReservedASCIIFastPath(t *testing.T) {
	check := func(s string) {
		if got, want := reservedASCII(s), reservedSlow(s); got != want {
			t.Fatalf("reservedASCII(%q) = %v, the Unicode path says %v", s, got, want)
		}
	}
	for a := 32; a < 127; a++ {
		for b := 32; b < 127; b++ {
			check(string([]byte{byte(a), byte(b)}))
		}
	}
	for _, s := range []string{"System", "SYSTEM", "system", "Sy5tem", "Systern", "SYSTERN", "5ystem", "sYsTeM", "System1", "alice", "bench-00042"} {
		check(s)
	}
}

func FuzzReservedASCII(f *testing.F) {
	f.Add("System")
	f.Add("5ysTern")
	f.Fuzz(func(t *testing.T, s string) {
		if !isASCII(s) || len(s) > MaxUsername {
			return
		}
		if got, want := reservedASCII(s), reservedSlow(s); got != want {
			t.Fatalf("reservedASCII(%q) = %v, the Unicode path says %v", s, got, want)
		}
	})
}

func FuzzNameKeyASCII(f *testing.F) {
	f.Add("alice")
	f.Add("SYSTEM")
	f.Fuzz(func(t *testing.T, s string) {
		if !isASCII(s) || len(s) > 64 {
			return
		}
		if got, want := NameKey(s), nameKeySlow(s); got != want {
			t.Fatalf("NameKey(%q) = %q, the Unicode path says %q", s, got, want)
		}
	})
}

func TestCheckUsernameOfAnASCIINameAllocatesLittle(t *testing.T) {
	raw := []byte("bench-00042") // the name is the only allocation, its key none
	var buf [MaxNameKey]byte
	if n := testing.AllocsPerRun(100, func() {
		name, _ := CheckUsername(raw)
		AppendNameKey(buf[:0], name)
	}); n > 1 {
		t.Fatalf("%v allocations to check an ASCII name and find its key", n)
	}
}

func TestAppendNameKeyIsNameKey(t *testing.T) {
	for _, s := range []string{"alice", "ALICE", "bench-00042", "Sy5tem", "José", "ＡＬＩＣＥ", "аlice"} {
		if got, want := string(AppendNameKey([]byte("x"), s)), "x"+NameKey(s); got != want {
			t.Fatalf("AppendNameKey(%q) = %q, want %q", s, got, want)
		}
	}
}
