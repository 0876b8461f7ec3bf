from kexue.cli import main

main()
