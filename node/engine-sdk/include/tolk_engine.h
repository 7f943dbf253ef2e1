/*
 * tolk_engine.h: the C ABI of Tolk inference engines, version 2.
 *
 * An engine is a shared library that exports one function,
 *
 *     const tolk_engine_descriptor *tolk_engine_descriptor(void);
 *
 * returning a pointer to a descriptor that lives as long as the library. The
 * node reads `abi_version` first and refuses the library unless it is
 * TOLK_ENGINE_ABI_VERSION (2) or 1; only then does it read the rest, with the
 * layout of that version.
 *
 * Version 2 adds, at the end of existing structs (so version 1's layout is a
 * prefix of version 2's):
 * - stage TOLK_STAGE_SPEECH_TRANSLATION: audio in `src_lang` -> text in
 *   `tgt_lang`, with no text stage between (whisper's translate task);
 * - `tolk_engine_descriptor.stages`: every stage the library serves, as
 *   TOLK_STAGE_BIT(stage) bits (its `stage` included). One library may serve
 *   several stages (whisper: ASR and speech translation);
 * - `tolk_input.stage`: the stage of this call, one of `stages`.
 * A version 1 library (descriptor without `stages`) is loaded as serving its
 * one `stage`; the host still passes a version 2 tolk_input, whose first
 * fields are version 1's.
 *
 * On the wire a speech translation engine is an ordinary `nmt` model
 * (src_lang -> tgt_lang): the node, which knows the engine reads audio,
 * gives it the job's audio instead of the recognised text.
 *
 * Rules both sides keep:
 * - Strings passed in are UTF-8 with an explicit length, not NUL-terminated.
 * - `process` is never called concurrently on one engine instance; different
 *   instances may be used from different threads at once. An engine with
 *   process-wide state (a global voice, a global decoder) guards it itself.
 * - Errors: every fallible call returns a tolk_status and, on failure, writes
 *   a NUL-terminated UTF-8 message (truncated to fit) into the caller's
 *   buffer `err` of `err_cap` bytes. No error crosses the ABI any other way:
 *   a C++ exception or a Rust panic must be caught inside the engine.
 * - Output buffers (`tolk_output.text`, `tolk_output.samples`) belong to the
 *   engine until the host hands them back through `free_output`, which it
 *   does exactly once after each successful `process`.
 * - Audio is mono signed 16-bit PCM in native byte order, with its rate.
 *
 * Rust engines: use the `tolk-engine-sdk` crate, which implements all of this
 * behind a trait and an export macro.
 */
#ifndef TOLK_ENGINE_H
#define TOLK_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOLK_ENGINE_ABI_VERSION 2u
#define TOLK_ENGINE_ABI_VERSION_1 1u
#define TOLK_ENGINE_DESCRIPTOR_SYMBOL "tolk_engine_descriptor"

/* The stage an engine serves. */
typedef enum {
    TOLK_STAGE_ASR = 1, /* pcm16 samples + rate + lang -> text        */
    TOLK_STAGE_NMT = 2, /* text + src_lang + tgt_lang -> text          */
    TOLK_STAGE_TTS = 3, /* text + lang -> pcm16 samples + sample_rate */
    TOLK_STAGE_SPEECH_TRANSLATION = 4 /* ABI 2: pcm16 samples + rate + src_lang + tgt_lang -> text */
} tolk_stage;

/* A stage's bit in tolk_engine_descriptor.stages. */
#define TOLK_STAGE_BIT(stage) (1u << (stage))

/* Results of create and process. */
typedef enum {
    TOLK_OK = 0,
    TOLK_ERR_INVALID_INPUT = 1, /* the input itself is bad (e.g. audio it cannot use) */
    TOLK_ERR_UNSUPPORTED = 2,   /* a language or option this engine does not have     */
    TOLK_ERR_BACKEND = 3,       /* the engine failed                                   */
    TOLK_ERR_PANIC = 4          /* the engine caught a panic/exception of its own      */
} tolk_status;

typedef struct {
    const char *ptr; /* UTF-8, not NUL-terminated; may be NULL when len is 0 */
    size_t len;
} tolk_str;

/* What process reads. Fields a stage does not use are empty. */
typedef struct {
    const int16_t *samples; /* ASR, speech translation: the audio */
    size_t n_samples;
    uint32_t sample_rate;
    tolk_str text;     /* NMT, TTS: the text */
    tolk_str src_lang; /* ASR: language heard; NMT, speech translation: source; TTS: language spoken */
    tolk_str tgt_lang; /* NMT, speech translation: target */
    uint32_t stage;    /* ABI 2: the tolk_stage of this call (a version 1 engine never reads it) */
} tolk_input;

/* What process writes. The host zeroes it before the call. */
typedef struct {
    char *text; /* ASR, NMT, speech translation: UTF-8 result, not necessarily NUL-terminated */
    size_t text_len;
    int16_t *samples; /* TTS: the speech */
    size_t n_samples;
    uint32_t sample_rate;
} tolk_output;

typedef struct tolk_engine_descriptor {
    uint32_t abi_version; /* TOLK_ENGINE_ABI_VERSION */
    uint32_t stage;       /* a tolk_stage: the main one */
    const char *name;     /* NUL-terminated, static: e.g. "pocketsphinx" */
    const char *version;  /* NUL-terminated, static: the engine's version */
    /* Creates an instance. `config` is the engine's options from the node
     * configuration as `key=value` lines (UTF-8, '\n'-separated). */
    int32_t (*create)(tolk_str config, void **out_engine, char *err, size_t err_cap);
    void (*destroy)(void *engine);
    int32_t (*process)(void *engine, const tolk_input *input, tolk_output *output, char *err, size_t err_cap);
    void (*free_output)(void *engine, tolk_output *output);
    uint32_t stages; /* ABI 2: TOLK_STAGE_BIT of every stage served, `stage` included */
} tolk_engine_descriptor;

typedef const tolk_engine_descriptor *(*tolk_engine_descriptor_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* TOLK_ENGINE_H */
