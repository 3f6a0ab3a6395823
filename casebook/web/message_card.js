// One message of the conversation as a single NiceGUI element.
//
// NiceGUI re-renders the whole element tree on every update, so the cost of a send in the browser grows
// with the number of elements on the page. Drawing sender, author, time, status, text and the actions
// button here, from props, keeps it at one element per message. (Splitting it into an outer component and
// an inner one without slots, which Vue could skip, measured slower: bench/results/exp-*.json.)
// Everything is rendered as text by Vue (text nodes), never as HTML.
import { h } from "vue";

export default {
  props: {
    sender: String,
    author: String,
    stamp: String,
    status: String,
    struck: Boolean,
    text: String,
    messageId: Number,
    day: String, // set on the first message of a day on screen: the date divider drawn above it
    scroll: String, // "newest": scroll the page to the newest message once this card is on it (the tab's own send)
  },
  mounted() {
    if (this.scroll === "newest") window.casebookScroll?.toNewest();
  },
  watch: {
    scroll(value) {
      if (value === "newest") window.casebookScroll?.toNewest(); // drawn already (another tab's copy came first)
    },
  },
  render() {
    const article = h("div", { role: "article", class: "casebook-message" }, [
      h("div", { class: "casebook-message-head" }, [
        h("span", { class: "casebook-message-sender" }, this.sender),
        h("span", { class: "casebook-message-author" }, this.author),
        h("span", { class: "casebook-message-stamp" }, this.stamp),
        this.status ? h("span", { class: "casebook-message-status" }, this.status) : null,
        h(
          "button",
          {
            type: "button",
            class: "casebook-message-actions",
            "aria-label": "Correct or mark this message",
            title: "Correct or mark this message",
            // one page-wide event instead of a NiceGUI listener per message (which NiceGUI would wrap anew
            // for every message on every update); the server only acts on ids this tab shows
            onClick: () => window.emitEvent("casebook_actions", this.messageId),
          },
          "\u22EE",
        ),
      ]),
      h("div", { class: this.struck ? "casebook-text casebook-struck" : "casebook-text" }, this.text),
    ]);
    // the id lets a search result scroll to its message; tabindex lets it take focus there (not in the tab order)
    const wrap = { class: "casebook-message-wrap", "data-message-id": this.messageId, tabindex: -1 };
    if (!this.day) return h("div", wrap, [article]);
    return h("div", wrap, [h("h3", { class: "casebook-day" }, this.day), article]);
  },
};
