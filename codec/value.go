package codec

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"reflect"
	"time"
	"unsafe"

	"github.com/google/uuid"
)

// Type tags: the first byte of every typed plaintext (see FORMAT.md).
const (
	TagNull    byte = 0x00
	TagString  byte = 0x01
	TagBytes   byte = 0x02
	TagBool    byte = 0x03
	TagInt     byte = 0x04
	TagUint    byte = 0x05
	TagFloat32 byte = 0x06
	TagFloat64 byte = 0x07
	TagTime    byte = 0x08
	TagUUID    byte = 0x09
	TagJSON    byte = 0x0A
)

var (
	timeType = reflect.TypeFor[time.Time]()
	uuidType = reflect.TypeFor[uuid.UUID]()
)

// valueCodec encodes and decodes one Go type (never a pointer) as typed
// plaintext. It is chosen once per field when the schema is built.
type valueCodec struct {
	tag    byte
	encode func(dst []byte, v reflect.Value) ([]byte, error)
	// decode reads the body (the bytes after the tag). body is owned by the
	// caller and may be retained.
	decode func(body []byte, v reflect.Value) error
}

func valueCodecFor(t reflect.Type) (valueCodec, error) {
	switch {
	case t.Kind() == reflect.Struct && t.ConvertibleTo(timeType):
		// time.Time and types defined from it (type BirthDate time.Time),
		// whose unexported fields JSON would silently drop.
		return valueCodec{TagTime, encodeTime, decodeTime}, nil
	case t == uuidType:
		return valueCodec{TagUUID, encodeUUID, decodeUUID}, nil
	}
	switch t.Kind() {
	case reflect.String:
		return valueCodec{TagString, func(dst []byte, v reflect.Value) ([]byte, error) {
			return append(dst, v.String()...), nil
		}, decodeString}, nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return valueCodec{TagBytes, func(dst []byte, v reflect.Value) ([]byte, error) {
				return append(dst, v.Bytes()...), nil
			}, decodeBytes}, nil
		}
	case reflect.Bool:
		return valueCodec{TagBool, func(dst []byte, v reflect.Value) ([]byte, error) {
			if v.Bool() {
				return append(dst, 1), nil
			}
			return append(dst, 0), nil
		}, decodeBool}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return valueCodec{TagInt, func(dst []byte, v reflect.Value) ([]byte, error) {
			return binary.BigEndian.AppendUint64(dst, uint64(v.Int())), nil
		}, decodeInt}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return valueCodec{TagUint, func(dst []byte, v reflect.Value) ([]byte, error) {
			return binary.BigEndian.AppendUint64(dst, v.Uint()), nil
		}, decodeUint}, nil
	case reflect.Float32:
		return valueCodec{TagFloat32, func(dst []byte, v reflect.Value) ([]byte, error) {
			return binary.BigEndian.AppendUint32(dst, math.Float32bits(float32(v.Float()))), nil
		}, decodeFloat32}, nil
	case reflect.Float64:
		return valueCodec{TagFloat64, func(dst []byte, v reflect.Value) ([]byte, error) {
			return binary.BigEndian.AppendUint64(dst, math.Float64bits(v.Float())), nil
		}, decodeFloat64}, nil
	case reflect.Uintptr, reflect.Complex64, reflect.Complex128, reflect.Chan,
		reflect.Func, reflect.Interface, reflect.UnsafePointer, reflect.Pointer:
		return valueCodec{}, ErrUnsupportedType
	}
	return valueCodec{TagJSON, encodeJSON, decodeJSON}, nil
}

func encodeTime(dst []byte, v reflect.Value) ([]byte, error) {
	t := v.Convert(timeType).Interface().(time.Time)
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond())), nil
}

func decodeTime(b []byte, v reflect.Value) error {
	if len(b) != 12 {
		return ErrTypeMismatch
	}
	ns := binary.BigEndian.Uint32(b[8:])
	if ns >= 1e9 {
		return ErrTypeMismatch
	}
	v.Set(reflect.ValueOf(time.Unix(int64(binary.BigEndian.Uint64(b)), int64(ns)).UTC()).Convert(v.Type()))
	return nil
}

func encodeUUID(dst []byte, v reflect.Value) ([]byte, error) {
	u := v.Interface().(uuid.UUID)
	return append(dst, u[:]...), nil
}

func decodeUUID(b []byte, v reflect.Value) error {
	if len(b) != 16 {
		return ErrTypeMismatch
	}
	var u uuid.UUID
	copy(u[:], b)
	v.Set(reflect.ValueOf(u))
	return nil
}

func decodeString(b []byte, v reflect.Value) error {
	// b is a fresh plaintext buffer nobody else holds or changes, so the
	// string can share it instead of copying.
	v.SetString(unsafe.String(unsafe.SliceData(b), len(b)))
	return nil
}

func decodeBytes(b []byte, v reflect.Value) error {
	v.SetBytes(b)
	return nil
}

func decodeBool(b []byte, v reflect.Value) error {
	if len(b) != 1 || b[0] > 1 {
		return ErrTypeMismatch
	}
	v.SetBool(b[0] == 1)
	return nil
}

func decodeInt(b []byte, v reflect.Value) error {
	if len(b) != 8 {
		return ErrTypeMismatch
	}
	x := int64(binary.BigEndian.Uint64(b))
	if v.OverflowInt(x) {
		return ErrTypeMismatch
	}
	v.SetInt(x)
	return nil
}

func decodeUint(b []byte, v reflect.Value) error {
	if len(b) != 8 {
		return ErrTypeMismatch
	}
	x := binary.BigEndian.Uint64(b)
	if v.OverflowUint(x) {
		return ErrTypeMismatch
	}
	v.SetUint(x)
	return nil
}

func decodeFloat32(b []byte, v reflect.Value) error {
	if len(b) != 4 {
		return ErrTypeMismatch
	}
	v.SetFloat(float64(math.Float32frombits(binary.BigEndian.Uint32(b))))
	return nil
}

func decodeFloat64(b []byte, v reflect.Value) error {
	if len(b) != 8 {
		return ErrTypeMismatch
	}
	v.SetFloat(math.Float64frombits(binary.BigEndian.Uint64(b)))
	return nil
}

func encodeJSON(dst []byte, v reflect.Value) ([]byte, error) {
	if !v.CanAddr() {
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		v = c
	}
	// Through a pointer, so MarshalJSON methods with pointer receivers run.
	b, err := json.Marshal(v.Addr().Interface())
	if err != nil {
		// json errors can quote values; report only the type.
		return nil, ErrUnsupportedType
	}
	return append(dst, b...), nil
}

func decodeJSON(b []byte, v reflect.Value) error {
	v.SetZero() // Unmarshal would merge into an existing map or slice.
	if err := json.Unmarshal(b, v.Addr().Interface()); err != nil {
		return ErrTypeMismatch
	}
	return nil
}
