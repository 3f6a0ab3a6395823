"""Note templates in a workspace tab: choosing one in the composer (the `Templates` button, or `/` typed in an
empty box), and keeping them in the Profile dialog (add, edit, delete).

A part of `Workspace` (workspace.py). Every action is one unit of work that first checks this tab's session
(`Workspace._checked`); the templates listed, changed and inserted are always those of the clinician the session
belongs to, held on the server: the browser only says which of the ones it was shown it chose.
"""

from __future__ import annotations

import json

from nicegui import ui
from sqlalchemy.orm import Session

from casebook.services import templates
from casebook.services.sessions import SignedIn
from casebook.services.templates import TemplateInfo
from casebook.web.attempt import NotDone
from casebook.web.components import heading

# Puts a template's text into the composer where the cursor is (in place of `/` when that is all the box holds),
# as typing would: the text area tells the server through its own input event. The cursor goes to the end of the
# template's first line, where the clinician starts writing.
INSERT_JS = """
<script>
window.casebookInsert = (id, text, replaceSlash) => {
  const found = document.getElementById(`c${id}`);  // NiceGUI gives the text area itself the element's id
  const box = found && found.tagName !== 'TEXTAREA' ? found.querySelector('textarea') : found;
  if (!box) return;
  const whole = replaceSlash && box.value === '/';
  const start = whole ? 0 : box.selectionStart;
  const end = whole ? box.value.length : box.selectionEnd;
  box.focus();
  box.setRangeText(text, start, end, 'end');
  box.dispatchEvent(new Event('input', {bubbles: true}));
  const firstLine = text.indexOf('\\n');
  const cursor = start + (firstLine < 0 ? text.length : firstLine);
  box.setSelectionRange(cursor, cursor);
  setTimeout(() => box.setSelectionRange(cursor, cursor));  // again after Vue has redrawn the box
};
</script>
"""
PREVIEW = 60  # characters of a template's first line shown in the Profile list


class TemplatePicker:
    """The composer's `Templates` menu and the Profile dialog's templates (mixed into `Workspace`)."""

    def _build_template_picker(self) -> None:
        ui.add_body_html(INSERT_JS)
        self.templates_button = ui.button(icon='article').props(
            'flat round aria-label=Templates aria-haspopup=menu title="Templates (or / in an empty box)"'
        )
        with self.templates_button:
            self.templates_menu = ui.menu().props('no-parent-event')  # opened by the server, once it has the list
        self.templates_button.on_click(lambda: self._open_templates(replace_slash=False))

    async def _open_templates(self, *, replace_slash: bool) -> None:
        if self.conversation is None:
            return
        listed = await self._checked(_list, lambda text: ui.notify(text, type='negative'), what='template list')
        if isinstance(listed, NotDone):
            return
        self.templates_menu.clear()
        with self.templates_menu:
            for template in listed:
                ui.menu_item(
                    template.name, on_click=lambda t=template: self._insert_template(t, replace_slash=replace_slash)
                ).props('role=menuitem')
            if not listed:
                ui.label('No templates yet.').classes('px-4 py-2 text-sm text-gray-700')
            ui.separator()
            ui.menu_item('Manage templates…', on_click=self._edit_profile).props('role=menuitem')
        self.templates_menu.open()

    def _insert_template(self, template: TemplateInfo, *, replace_slash: bool) -> None:
        if self.conversation is None or not self.composer.enabled:
            return
        ui.run_javascript(
            f'window.casebookInsert({self.composer.id}, {json.dumps(template.text)}, {json.dumps(replace_slash)})'
        )

    # ----- in the Profile dialog ----------------------------------------------------------------------

    def _build_templates_section(self) -> None:
        heading('Templates', level=3, classes='text-base font-semibold')
        ui.label('Text you write often, for the composer: its Templates button, or / in an empty box.').classes(
            'text-sm text-gray-700'
        )
        self.templates_list = ui.column().classes('w-full gap-1').props('role=list aria-label="Your templates"')
        self.template_editing: TemplateInfo | None = None
        with ui.column().classes('w-full gap-2 border rounded p-2') as self.template_editor:
            self.template_name = ui.input('Template name').classes('w-full')
            self.template_name.props(f'outlined dense maxlength={templates.NAME_MAX}')
            self.template_text = ui.textarea('Template text').classes('w-full casebook-composer')
            self.template_text.props('outlined autogrow')
            self.template_error = ui.label().props('role=alert').classes('text-red-800 text-sm')
            with ui.row().classes('w-full justify-end gap-2'):
                ui.button('Cancel', on_click=self._close_template_editor).props('flat')
                ui.button('Save template', on_click=self._save_template)
        self.template_editor.set_visibility(False)
        self.add_template_button = ui.button('Add template', icon='add', on_click=lambda: self._open_template_editor())
        self.add_template_button.props('outline no-caps')

    async def _show_templates(self) -> None:
        listed = await self._checked(_list, self.template_error.set_text, what='template list')
        if isinstance(listed, NotDone):
            return
        self.templates_list.clear()
        with self.templates_list:
            if not listed:
                ui.label('No templates yet.').classes('text-sm text-gray-700')
            for template in listed:
                with ui.row().classes('w-full items-center gap-2 no-wrap').props('role=listitem'):
                    with ui.column().classes('grow gap-0 min-w-0'):
                        ui.label(template.name).classes('font-medium casebook-text')
                        first = template.text.split('\n', 1)[0]
                        preview = first if len(first) <= PREVIEW else first[: PREVIEW - 1] + '…'
                        ui.label(preview).classes('text-sm text-gray-700 truncate w-full')
                    edit = ui.button(icon='edit', on_click=lambda t=template: self._open_template_editor(t))
                    edit.props('flat round').props['aria-label'] = f'Edit {template.name}'  # as it is: never parsed
                    delete = ui.button(icon='delete', on_click=lambda t=template: self._confirm_delete_template(t))
                    delete.props('flat round').props['aria-label'] = f'Delete {template.name}'

    def _open_template_editor(self, template: TemplateInfo | None = None) -> None:
        self.template_editing = template
        self.template_name.value = template.name if template else ''
        self.template_text.value = template.text if template else ''
        self.template_error.set_text('')
        self.template_editor.set_visibility(True)
        self.add_template_button.set_visibility(False)
        self.template_name.run_method('focus')

    def _close_template_editor(self) -> None:
        self.template_editing = None
        self.template_editor.set_visibility(False)
        self.add_template_button.set_visibility(True)

    async def _save_template(self) -> None:
        editing = self.template_editing
        name = self.template_name.value or ''
        text = self.template_text.value or ''

        def save(session: Session, signed: SignedIn) -> TemplateInfo:
            return templates.save_sync(
                session,
                clinician_id=signed.clinician.id,
                name=name,
                text=text,
                template_id=editing.id if editing else None,
            )

        saved = await self._checked(save, self.template_error.set_text, what='template save')
        if isinstance(saved, NotDone):
            return
        self._close_template_editor()
        ui.notify(f'Template “{saved.name}” saved.', type='positive')
        await self._show_templates()

    def _confirm_delete_template(self, template: TemplateInfo) -> None:
        with ui.dialog().props('aria-label="Delete a template"') as confirm, ui.card().classes('max-w-sm'):
            ui.label(f'Delete the template “{template.name}”? Messages written with it stay as they are.')

            async def delete() -> None:
                def work(session: Session, signed: SignedIn) -> None:
                    templates.delete_sync(session, clinician_id=signed.clinician.id, template_id=template.id)

                done = await self._checked(work, self.template_error.set_text, what='template delete')
                confirm.close()
                if not isinstance(done, NotDone):
                    ui.notify(f'Template “{template.name}” deleted.', type='positive')
                    await self._show_templates()

            with ui.row().classes('w-full justify-end gap-2'):
                ui.button('Cancel', on_click=confirm.close).props('flat')
                ui.button('Delete', on_click=delete).props('color=negative')
        confirm.on('hide', confirm.delete)
        confirm.open()


def _list(session: Session, signed: SignedIn) -> list[TemplateInfo]:
    return templates.list_sync(session, clinician_id=signed.clinician.id)
