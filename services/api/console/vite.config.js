// The console's build. `make console` runs it; dist/ is committed so `make run` needs no Node.
// dist/source-hash.txt records a hash of every source file the build read, and
// tests/services/api/console/test_build.py recomputes it: a source changed without a rebuild
// fails the suite (the rule is written twice, here and in the test: keep them alike).
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import { defineConfig } from 'vite'

const ROOT = import.meta.dirname
const SOURCES = ['index.html', 'package.json', 'package-lock.json', 'vite.config.js', 'src']

function files (path) {
  try {
    return readdirSync(path, { withFileTypes: true }).flatMap((e) => files(join(path, e.name)))
  } catch (err) {
    if (err.code === 'ENOTDIR') return [path]
    throw err
  }
}

// sha256 over "<posix path>\n<sha256 of its bytes>\n" for each file, sorted by path.
export function sourceHash () {
  const paths = SOURCES.flatMap((s) => files(join(ROOT, s)))
    .map((p) => relative(ROOT, p).split(sep).join('/'))
    .sort()
  const whole = createHash('sha256')
  for (const p of paths) {
    const one = createHash('sha256').update(readFileSync(join(ROOT, p))).digest('hex')
    whole.update(`${p}\n${one}\n`)
  }
  return whole.digest('hex')
}

const recordSourceHash = {
  name: 'redline-source-hash',
  writeBundle (options) {
    writeFileSync(join(options.dir, 'source-hash.txt'), sourceHash() + '\n')
  }
}

export default defineConfig({
  root: ROOT,
  base: '/',
  plugins: [recordSourceHash],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // One entry; the editor's libraries are most of it and change rarely.
    chunkSizeWarningLimit: 1200,
    sourcemap: false
  }
})
