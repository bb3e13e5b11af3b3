from mgwebhook.cli.app import main

main()
