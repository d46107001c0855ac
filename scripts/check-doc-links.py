#!/usr/bin/env python3
"""Check that every relative link and #anchor in the project's Markdown
(README.md, ARCHITECTURE.md, docs/*.md) resolves: the file exists and the
anchor is a heading of it, slugged as GitHub does (lowercase, punctuation
dropped, spaces to '-', duplicates suffixed -1, -2, ...).
Usage: check-doc-links.py [FILE.md ...]   (default: the files above)
Exit 0 if all resolve, 1 otherwise; prints every link checked with -v.
Run from the repository root. Why: the README is a landing page and the
reference lives under docs/, so a renamed heading or a moved section must
not leave a dead link behind."""
import os, re, sys, glob

def strip_code(text):
    """Blank out fenced code blocks and inline code spans (keeping line count)."""
    out, fence = [], None
    for line in text.split('\n'):
        m = re.match(r'^\s*(`{3,}|~{3,})', line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append('')
            continue
        if m:
            fence = m.group(1); out.append(''); continue
        out.append(line)
    text = '\n'.join(out)
    return re.sub(r'(`+)(.+?)\1', lambda m: ' ' * len(m.group(0)), text, flags=re.S)

def slug(heading):
    h = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)   # links -> text
    h = h.replace('`', '').replace('*', '')
    h = h.strip().lower()
    h = re.sub(r'[^\w\- ]', '', h)                          # punctuation dropped (keeps _ and -)
    return h.replace(' ', '-')

def anchors(path):
    res, seen, fence = set(), {}, None
    for line in open(path, encoding='utf-8').read().split('\n'):
        m = re.match(r'^\s*(`{3,}|~{3,})', line)
        if fence:
            if m and m.group(1)[0] == fence[0]: fence = None
            continue
        if m: fence = m.group(1); continue
        h = re.match(r'^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$', line)
        if h:
            s = slug(h.group(1))
            n = seen.get(s, 0); seen[s] = n + 1
            res.add(s if n == 0 else f'{s}-{n}')
    for m in re.finditer(r'<a\s+(?:name|id)="([^"]+)"', open(path, encoding='utf-8').read()):
        res.add(m.group(1))
    return res

def main():
    verbose = '-v' in sys.argv
    files = [a for a in sys.argv[1:] if a != '-v'] or \
        ['README.md', 'ARCHITECTURE.md'] + sorted(glob.glob('docs/*.md'))
    bad = checked = 0
    for f in files:
        text = strip_code(open(f, encoding='utf-8').read())
        for m in re.finditer(r'\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)', text):
            target = m.group(1)
            line = text.count('\n', 0, m.start()) + 1
            if re.match(r'^[a-z][a-z0-9+.-]*:', target):   # http:, https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            err = None
            if not os.path.exists(dest):
                err = f'no such file {dest}'
            elif anchor:
                if not dest.endswith('.md'):
                    err = f'anchor on a non-Markdown file {dest}'
                elif anchor not in anchors(dest):
                    err = f'no heading #{anchor} in {dest}'
            if err:
                bad += 1; print(f'{f}:{line}: {target}: {err}')
            elif verbose:
                print(f'{f}:{line}: {target}: ok')
    print(f'{checked} relative links checked in {len(files)} files, {bad} broken')
    return 1 if bad else 0

sys.exit(main())
