/* Chat templates and training labels for LLaVA-style conversations.
 *
 * A conversation (turns of system / user / assistant text, "human" and
 * "gpt" in LLaVA files) becomes token ids and labels the way LLaVA-NeXT's
 * preprocess_qwen (LLaVA-OneVision) and LLaDA-V's preprocess_llada build
 * them: each message is rendered as text and encoded on its own, and the
 * ids of the messages are concatenated.
 *
 *   qwen   <|im_start|>ROLE\nCONTENT<|im_end|>\n
 *   llada  <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
 *          (<|startoftext|> before the first message)
 *
 * As in the reference:
 *  - a system message comes first: the conversation's own leading system
 *    turn, else the configured one (qwen default: Qwen2.5's "You are Qwen,
 *    created by Alibaba Cloud. You are a helpful assistant."; llada
 *    default: none, as in LLaDA's chat template). LLaVA-NeXT itself always
 *    inserts "You are a helpful assistant." (pass it as opts.system to
 *    reproduce LLaVA-OneVision's ids exactly).
 *  - when the first (non-system) turn is not from the user it is dropped.
 *  - in a sample with an image, a turn holding exactly one "<image>" not at
 *    its start has it moved there: text.replace("<image>", "").strip(), then
 *    "<image>\n" + text, stripped again (LLaVA's preprocess_multimodal;
 *    strip is Python's str.strip). Each "<image>" becomes ONE id, the image
 *    slot (it is cut out of the text before encoding, like the added token
 *    the reference registers); the model replaces it with image_tokens
 *    feature rows, which count toward max_len. In a sample without an
 *    image "<image>" is ordinary text, as in the reference.
 *
 * Labels (DVL_IGNORE_INDEX where not supervised):
 *  - DVL_LABELS_ASSISTANT (default): the tokens of each assistant turn's
 *    content and its closing marker are supervised: for qwen CONTENT
 *    <|im_end|> and the "\n" after it (the reference supervises that "\n"
 *    too), for llada CONTENT <|eot_id|>. The role header
 *    ("<|im_start|>assistant\n") and every system / user token are not. A
 *    token that spans the header's end and the content counts as content.
 *  - DVL_LABELS_REFERENCE: exactly LLaVA-NeXT / LLaDA-V: the whole assistant
 *    message (header included) is supervised, and so is every occurrence,
 *    anywhere, of the template's "unmask" tokens: qwen "\n", <|im_start|>,
 *    <|im_end|>; llada <|startoftext|>, <|start_header_id|>,
 *    <|end_header_id|>, <|eot_id|> (LLaDA-V also lists "\n\n", but looks it
 *    up as a token string, which no byte-level vocabulary has, so it is
 *    never unmasked there either).
 *  The image slot's label is always DVL_IGNORE_INDEX.
 *
 * Length: seq_len = ids + (image_tokens - 1) per image slot. Over max_len,
 * DVL_OVERFLOW_TRUNCATE keeps the longest prefix of whole turns that ends
 * with an assistant turn and still holds the image slot; when there is none,
 * or with DVL_OVERFLOW_SKIP, the conversation is refused (out->too_long).
 *
 * Threads: a dvl_chat is read-only after dvl_chat_new; each thread passes
 * its own dvl_tokenizer_state and dvl_chat_out. */
#ifndef DVL_TEXT_CHAT_H
#define DVL_TEXT_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "text/tokenizer.h"

/* The label of positions that carry no loss (PyTorch's ignore_index). */
#define DVL_IGNORE_INDEX (-100)

typedef enum dvl_chat_template { DVL_CHAT_QWEN = 0, DVL_CHAT_LLADA = 1 } dvl_chat_template;
typedef enum dvl_chat_labels { DVL_LABELS_ASSISTANT = 0, DVL_LABELS_REFERENCE = 1 } dvl_chat_labels;
typedef enum dvl_chat_overflow { DVL_OVERFLOW_TRUNCATE = 0, DVL_OVERFLOW_SKIP = 1 } dvl_chat_overflow;
typedef enum dvl_chat_role { DVL_ROLE_SYSTEM = 0, DVL_ROLE_USER = 1, DVL_ROLE_ASSISTANT = 2 } dvl_chat_role;

typedef struct dvl_chat_opts {
    dvl_chat_template tmpl;
    const char *system;      /* NULL: the template's default; "": no system message */
    int32_t image_token_id;  /* < 0: the tokenizer's "<image>" token, else its vocab size */
    int64_t image_tokens;    /* feature rows one image slot stands for (>= 1) */
    int64_t max_len;         /* longest seq_len kept; 0: no limit */
    dvl_chat_overflow overflow;
    dvl_chat_labels labels;
} dvl_chat_opts;

/* qwen, default system message, automatic image id, 729 image rows
 * (SigLIP 384/14: 27 x 27 patches), no length limit, truncate, assistant
 * labels. */
void dvl_chat_opts_default(dvl_chat_opts *o);

/* One turn; text[0..len) is UTF-8 (not necessarily NUL-terminated). */
typedef struct dvl_chat_turn {
    dvl_chat_role role;
    const char *text;
    size_t len;
} dvl_chat_turn;

/* The result of one encode; zero-initialise, reuse across calls, free
 * with dvl_chat_out_free. */
typedef struct dvl_chat_out {
    int32_t *ids, *labels;
    int64_t n, cap;
    int64_t seq_len;    /* n + (image_tokens - 1) * slots */
    int64_t image_pos;  /* index in ids of the image slot, -1 when none */
    int turns_kept;     /* turns of the input that were encoded */
    bool truncated;     /* turns were dropped to fit max_len */
    bool too_long;      /* set when encode refused the conversation for its length */
    /* scratch */
    char *buf;
    size_t buf_cap;
    dvl_ids tmp;
    int64_t *turn_end;
    int turn_cap;
} dvl_chat_out;

void dvl_chat_out_free(dvl_chat_out *o);

typedef struct dvl_chat dvl_chat;

/* Resolve the template's marker tokens in tok (which must outlive the
 * dvl_chat): an error names the token the tokenizer lacks. */
dvl_chat *dvl_chat_new(const dvl_tokenizer *tok, const dvl_chat_opts *o, dvl_err *err);
void dvl_chat_free(dvl_chat *c);

/* The id written for an image slot. */
int32_t dvl_chat_image_id(const dvl_chat *c);
/* The slot id when none is given: tok's "<image>", else its vocabulary
 * size (dvl-prep build and dvl-convert init agree through this). */
int32_t dvl_chat_default_image_id(const dvl_tokenizer *tok);
/* The system message used when a conversation has none (NULL: none). */
const char *dvl_chat_system(const dvl_chat *c);
const char *dvl_chat_template_name(dvl_chat_template t);

/* LLaVA's "from" (or a chat "role") as a role: human/user, gpt/assistant,
 * system; -1 for anything else. */
int dvl_chat_role_parse(const char *from);

/* Encode turns[0..n). has_image: the sample has one image, so its text
 * must hold exactly one "<image>". DVL_EINVAL with a message for a
 * conversation that cannot be used (no assistant turn, wrong number of
 * "<image>", invalid UTF-8, too long: then out->too_long is set). */
int dvl_chat_encode(const dvl_chat *c, dvl_tokenizer_state *st, const dvl_chat_turn *turns,
                    int n, bool has_image, dvl_chat_out *out, dvl_err *err);

#endif
