// One search result as a single NiceGUI element: a button that opens the message in its conversation.
//
// The snippet arrives as pieces [text, matched]; matched pieces are drawn in <mark>. Everything is a Vue text
// node, never HTML: a note's own markup is shown as the characters it is.
import { h } from "vue";

export default {
  props: {
    patient: String,
    sender: String,
    author: String,
    stamp: String,
    status: String,
    pieces: Array,
    hitId: Number,
  },
  render() {
    const snippet = (this.pieces || []).map(([text, matched]) => (matched ? h("mark", text) : text));
    return h(
      "button",
      {
        type: "button",
        class: "casebook-hit",
        // one page-wide event for every result; the server only acts on results this tab was given
        onClick: () => window.emitEvent("casebook_hit", this.hitId),
      },
      [
        h("span", { class: "casebook-hit-head" }, [
          h("span", { class: "casebook-hit-patient" }, this.patient),
          h("span", { class: "casebook-message-sender" }, this.sender),
          h("span", { class: "casebook-message-author" }, this.author),
          h("span", { class: "casebook-message-stamp" }, this.stamp),
          this.status ? h("span", { class: "casebook-message-status" }, this.status) : null,
        ]),
        h("span", { class: "casebook-hit-snippet" }, snippet),
      ],
    );
  },
};
