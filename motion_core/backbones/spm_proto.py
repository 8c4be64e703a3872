"""SentencePiece models without the sentencepiece/protobuf packages.

ComfyUI's umt5-xxl files (``umt5_xxl_fp16.safetensors``, ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``) carry the
tokenizer inside the weights: a uint8 tensor ``spiece_model`` holding a serialized SentencePiece ``ModelProto``
(ComfyUI's ``SPieceTokenizer.serialize_model``). This module reads and writes that message in the protobuf wire
format (the few fields a Unigram tokenizer needs) and builds the ``transformers`` T5 tokenizer from it, as
transformers converts a T5/UMT5 ``spiece.model`` (Unigram over the pieces and scores, unk id from the trainer
spec, the normalizer's ``precompiled_charsmap`` as a Precompiled normalizer, Metaspace with a dummy prefix, the
``$A </s>`` template).

The fields (``sentencepiece_model.proto``)::

    ModelProto      1 pieces (repeated SentencePiece)  2 trainer_spec  3 normalizer_spec
    SentencePiece   1 piece (string)  2 score (float)  3 type (1 normal, 2 unknown, 3 control, 4 user defined,
                    5 unused, 6 byte)
    TrainerSpec     3 model_type (1 unigram, 2 bpe)  35 byte_fallback  40 unk_id  41 bos_id  42 eos_id  43 pad_id
    NormalizerSpec  1 name  2 precompiled_charsmap (bytes)  3 add_dummy_prefix  4 remove_extra_whitespaces
                    5 escape_whitespaces

Other fields are skipped on read (every wire type is handled, so unknown fields never break parsing).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelLoadError

__all__ = ["SentencePieceModel", "parse_model_proto", "serialize_model_proto", "t5_tokenizer_from_spm"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SentencePieceModel:
    """What a T5/UMT5 tokenizer needs from a SentencePiece model."""

    #: (piece, score, type) in id order
    pieces: list[tuple[str, float, int]]
    model_type: int = 1
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    byte_fallback: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- wire format
class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        result = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated field")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def fields(self):
        """(field number, wire type, value): varints as int, 64/32-bit as raw bytes, length-delimited as bytes."""
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 1:
                yield number, wire, self.take(8)
            elif wire == 2:
                yield number, wire, self.take(self.varint())
            elif wire == 5:
                yield number, wire, self.take(4)
            else:
                raise ValueError(f"unsupported wire type {wire}")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int32 are sign-extended to 64 bits on the wire
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_model_proto(data: bytes) -> SentencePieceModel:
    """Parse a serialized SentencePiece ``ModelProto``; ValueError when the bytes are not one."""
    model = SentencePieceModel(pieces=[])
    for number, wire, value in _Reader(bytes(data)).fields():
        if number == 1 and wire == 2:
            piece, score, kind = "", 0.0, NORMAL
            for n, w, v in _Reader(value).fields():
                if n == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    kind = v
            model.pieces.append((piece, score, kind))
        elif number == 2 and wire == 2:
            for n, w, v in _Reader(value).fields():
                if w != 0:
                    continue
                if n == 3:
                    model.model_type = v
                elif n == 35:
                    model.byte_fallback = bool(v)
                elif n in (40, 41, 42, 43):
                    setattr(model, {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[n], _int32(v))
        elif number == 3 and wire == 2:
            for n, w, v in _Reader(value).fields():
                if n == 1 and w == 2:
                    model.normalizer_name = v.decode("utf-8", "replace")
                elif n == 2 and w == 2:
                    model.precompiled_charsmap = bytes(v)
                elif n in (3, 4, 5) and w == 0:
                    setattr(model, {3: "add_dummy_prefix", 4: "remove_extra_whitespaces",
                                    5: "escape_whitespaces"}[n], bool(v))
    if not model.pieces:
        raise ValueError("no pieces")
    return model


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def serialize_model_proto(model: SentencePieceModel) -> bytes:
    """The ``ModelProto`` bytes of ``model`` (pieces, trainer spec ids, normalizer spec) -- what
    ``sentencepiece`` writes for these fields, so ComfyUI's SPieceTokenizer and :func:`parse_model_proto` read it."""
    out = bytearray()
    for piece, score, kind in model.pieces:
        body = _bytes_field(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score)
        if kind != NORMAL:
            body += _key(3, 0) + _varint(kind)
        out += _bytes_field(1, body)
    trainer = (_key(3, 0) + _varint(model.model_type) + _key(35, 0) + _varint(int(model.byte_fallback))
               + _key(40, 0) + _varint(model.unk_id) + _key(41, 0) + _varint(model.bos_id)
               + _key(42, 0) + _varint(model.eos_id) + _key(43, 0) + _varint(model.pad_id))
    out += _bytes_field(2, trainer)
    normalizer = b""
    if model.normalizer_name:
        normalizer += _bytes_field(1, model.normalizer_name.encode("utf-8"))
    if model.precompiled_charsmap:
        normalizer += _bytes_field(2, model.precompiled_charsmap)
    normalizer += (_key(3, 0) + _varint(int(model.add_dummy_prefix)) + _key(4, 0)
                   + _varint(int(model.remove_extra_whitespaces)) + _key(5, 0) + _varint(int(model.escape_whitespaces)))
    out += _bytes_field(3, normalizer)
    return bytes(out)


# --------------------------------------------------------------------------------------------- tokenizer
def t5_tokenizer_from_spm(data: bytes, *, source: str, model_max_length: int = 512):
    """A transformers ``T5Tokenizer`` (tokenizers-backed: what ``T5TokenizerFast`` is in transformers 5) built
    from the serialized SentencePiece model ``data`` the way transformers builds a T5/UMT5 tokenizer from a
    SentencePiece vocabulary: Unigram over the pieces and scores (pad ``<pad>`` = 0, eos ``</s>`` = 1, unk
    ``<unk>`` = 2), the charsmap as a Precompiled normalizer, a Metaspace pre-tokenizer with the dummy prefix and
    the ``$A </s>`` template.

    No ``<extra_id_N>`` sentinels are appended (``extra_ids=0``): ComfyUI's tokenizer has none either, and prompts
    never use them. ``source`` names the file in errors."""
    from transformers import T5Tokenizer

    try:
        spm = parse_model_proto(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{source}: its spiece_model tensor is not a SentencePiece model ({exc}).") from None
    if spm.model_type != 1:
        raise ModelLoadError(f"{source}: its SentencePiece model is not a Unigram model (model_type "
                             f"{spm.model_type}); umt5-xxl's is.")
    ids = {piece: i for i, (piece, _, _) in enumerate(spm.pieces)}
    for token, want in (("<pad>", 0), ("</s>", 1), ("<unk>", 2)):
        if ids.get(token) != want or (token == "<unk>" and spm.unk_id != want):
            raise ModelLoadError(f"{source}: its SentencePiece model has {token} at id {ids.get(token)}, not {want} "
                                 f"(a T5/UMT5 tokenizer has pad=0, eos=1, unk=2).")
    if not spm.add_dummy_prefix:
        raise ModelLoadError(f"{source}: its SentencePiece model adds no dummy prefix; T5/UMT5 tokenizers do.")
    tokenizer = T5Tokenizer(vocab=[(p, s) for p, s, _ in spm.pieces],
                            _spm_precompiled_charsmap=spm.precompiled_charsmap or None, extra_ids=0,
                            additional_special_tokens=[], model_max_length=model_max_length)
    if len(tokenizer) != len(spm.pieces):
        raise ModelLoadError(f"{source}: the tokenizer built from its spiece_model has {len(tokenizer)} tokens, "
                             f"the SentencePiece model {len(spm.pieces)}.")
    return tokenizer
